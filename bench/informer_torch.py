#!/usr/bin/env python3
"""PyTorch reference for issue 8, figure 3: a compact Informer (Zhou et al. 2021; the reference code's
models/model.py, encoder.py, decoder.py, attn.py, embed.py) with the same shapes as keel's presets, timed
like adapters/benches/train.rs: one warm-up step, then the median of N training steps (forward, MSE,
backward, clip_grad_norm 1.0, Adam lr 1e-4) and of N forward-only steps (eval, no_grad), batch 32, f32, CPU.

Usage: bench/informer_torch.py [--phases] <small|base> <timed steps> [threads]
(--phases: median ms of forward, loss, backward, clip and Adam separately, like keel's `phases` mode)
Prints one Markdown table row: preset | torch | threads | params | batch | steps | train ms | fwd ms | peak RSS MiB.

Shapes match keel's `trainer::model_config` on tests/data/msft-daily.csv with the default features (MS):
c_in 6, c_out 1, 5 calendar features, seq_len 96, label_len 48, pred_len 24, 2 encoder layers (with one
distilling layer), 1 decoder layer, ProbSparse factor 5, dropout 0.05; every Linear/Conv has a bias, as
in keel, so the parameter count must equal keel's (small 182 721, base 11 324 929): the script checks it.
Inputs are random normal tensors of the right shapes (the step time does not depend on the values).
"""
import math
import resource
import statistics
import sys
import time
import warnings

warnings.filterwarnings("ignore", message="Failed to initialize NumPy")  # torch works without numpy here

import torch  # noqa: E402
import torch.nn as nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

C_IN, C_OUT, N_TIME = 6, 1, 5
SEQ, LABEL, PRED = 96, 48, 24
PRESETS = {"small": (64, 4, 256, 182_721), "base": (512, 8, 2048, 11_324_929)}


class CircularConv3(nn.Module):
    def __init__(self, c_in, c_out):
        super().__init__()
        self.conv = nn.Conv1d(c_in, c_out, 3, padding=1, padding_mode="circular")

    def forward(self, x):  # (B, L, C)
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


def positional(l, d):
    pe = torch.zeros(l, d)
    pos = torch.arange(l).float().unsqueeze(1)
    div = torch.exp(torch.arange(0, d, 2).float() * -(math.log(10000.0) / d))
    pe[:, 0::2] = torch.sin(pos * div)
    pe[:, 1::2] = torch.cos(pos * div)
    return pe.unsqueeze(0)


class DataEmbedding(nn.Module):
    def __init__(self, d, dropout):
        super().__init__()
        self.value = CircularConv3(C_IN, d)
        self.time = nn.Linear(N_TIME, d)
        self.register_buffer("pe", positional(SEQ + PRED, d), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, mark):
        return self.drop(self.value(x) + self.pe[:, : x.size(1)] + self.time(mark))


def sample_count(c, l):
    return min(c * max(1, math.ceil(math.log(l))), l)


class ProbAttention(nn.Module):
    def __init__(self, factor, masked):
        super().__init__()
        self.factor, self.masked = factor, masked

    def forward(self, q, k, v):  # (B, H, L, D)
        b, h, lq, dh = q.shape
        lk = k.size(2)
        n_sample, u = sample_count(self.factor, lk), sample_count(self.factor, lq)
        idx = torch.randint(lk, (lq, n_sample))
        k_sample = k.unsqueeze(-3).expand(b, h, lq, lk, dh)[:, :, torch.arange(lq).unsqueeze(1), idx, :]
        qk = torch.matmul(q.unsqueeze(-2), k_sample.transpose(-2, -1)).squeeze(-2)
        m = qk.max(-1)[0] - qk.sum(-1) / lk
        top = m.topk(u, sorted=False)[1]  # (B, H, u)
        bi, hi = torch.arange(b)[:, None, None], torch.arange(h)[None, :, None]
        q_top = q[bi, hi, top]
        scores = torch.matmul(q_top, k.transpose(-2, -1)) / math.sqrt(dh)
        if self.masked:
            ctx = v.cumsum(dim=-2)
            mask = torch.arange(lk)[None, None, None, :] > top[..., None]
            scores = scores.masked_fill(mask, -1e30)
        else:
            ctx = v.mean(dim=-2, keepdim=True).expand(b, h, lq, dh).clone()
        attn = torch.softmax(scores, dim=-1)
        ctx[bi, hi, top] = torch.matmul(attn, v).type_as(ctx)
        return ctx


class FullAttention(nn.Module):
    def __init__(self, dropout):
        super().__init__()
        self.drop = nn.Dropout(dropout)

    def forward(self, q, k, v):
        a = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.size(-1)), dim=-1)
        return torch.matmul(self.drop(a), v)


class AttentionLayer(nn.Module):
    def __init__(self, attn, d, h, mix):
        super().__init__()
        self.attn, self.h, self.mix = attn, h, mix
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))

    def forward(self, queries, keys, values):
        b, l, d = queries.shape
        s, h = keys.size(1), self.h
        q = self.q(queries).view(b, l, h, -1).transpose(1, 2)
        k = self.k(keys).view(b, s, h, -1).transpose(1, 2)
        v = self.v(values).view(b, s, h, -1).transpose(1, 2)
        out = self.attn(q, k, v)  # (B, H, L, D)
        out = out.reshape(b, l, d) if self.mix else out.transpose(1, 2).reshape(b, l, d)
        return self.o(out)


class FeedForward(nn.Module):
    def __init__(self, d, d_ff, dropout):
        super().__init__()
        self.conv1, self.conv2 = nn.Linear(d, d_ff), nn.Linear(d_ff, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        return self.drop(self.conv2(self.drop(F.gelu(self.conv1(x)))))


class EncoderLayer(nn.Module):
    def __init__(self, d, h, d_ff, factor, dropout):
        super().__init__()
        self.attn = AttentionLayer(ProbAttention(factor, False), d, h, False)
        self.ff = FeedForward(d, d_ff, dropout)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x):
        x = self.norm1(x + self.drop(self.attn(x, x, x)))
        return self.norm2(x + self.ff(x))


class DistilLayer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.conv, self.norm = CircularConv3(d, d), nn.BatchNorm1d(d)
        self.pool = nn.MaxPool1d(3, 2, 1)

    def forward(self, x):
        y = F.elu(self.norm(self.conv(x).transpose(1, 2)))
        return self.pool(y).transpose(1, 2)


class DecoderLayer(nn.Module):
    def __init__(self, d, h, d_ff, factor, dropout):
        super().__init__()
        self.self_attn = AttentionLayer(ProbAttention(factor, True), d, h, True)
        self.cross_attn = AttentionLayer(FullAttention(dropout), d, h, False)
        self.ff = FeedForward(d, d_ff, dropout)
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x, cross):
        x = self.norm1(x + self.drop(self.self_attn(x, x, x)))
        x = self.norm2(x + self.drop(self.cross_attn(x, cross, cross)))
        return self.norm3(x + self.ff(x))


class Informer(nn.Module):
    def __init__(self, d, h, d_ff, factor=5, dropout=0.05, e_layers=2, d_layers=1):
        super().__init__()
        self.enc_emb, self.dec_emb = DataEmbedding(d, dropout), DataEmbedding(d, dropout)
        self.enc = nn.ModuleList(EncoderLayer(d, h, d_ff, factor, dropout) for _ in range(e_layers))
        self.distil = nn.ModuleList(DistilLayer(d) for _ in range(e_layers - 1))
        self.enc_norm = nn.LayerNorm(d)
        self.dec = nn.ModuleList(DecoderLayer(d, h, d_ff, factor, dropout) for _ in range(d_layers))
        self.dec_norm = nn.LayerNorm(d)
        self.proj = nn.Linear(d, C_OUT)

    def forward(self, x_enc, mark_enc, x_dec, mark_dec):
        enc = self.enc_emb(x_enc, mark_enc)
        for i, layer in enumerate(self.enc):
            enc = layer(enc)
            if i < len(self.distil):
                enc = self.distil[i](enc)
        enc = self.enc_norm(enc)
        dec = self.dec_emb(x_dec, mark_dec)
        for layer in self.dec:
            dec = layer(dec, enc)
        return self.proj(self.dec_norm(dec))[:, -PRED:, :]


def main():
    phases = "--phases" in sys.argv
    if phases:
        sys.argv.remove("--phases")
    size = sys.argv[1] if len(sys.argv) > 1 else "small"
    steps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    threads = int(sys.argv[3]) if len(sys.argv) > 3 else torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(1)
    d, h, d_ff, expected = PRESETS[size]
    model = Informer(d, h, d_ff)
    params = sum(p.numel() for p in model.parameters())
    assert params == expected, f"{size}: {params} parameters, keel has {expected}: the shapes differ"
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    b = 32

    def batch():
        return (torch.randn(b, SEQ, C_IN), torch.rand(b, SEQ, N_TIME) - 0.5,
                torch.randn(b, LABEL + PRED, C_IN), torch.rand(b, LABEL + PRED, N_TIME) - 0.5,
                torch.randn(b, PRED, C_OUT))

    batches = [batch() for _ in range(steps + 1)]

    def train_step(xb):
        x_enc, m_enc, x_dec, m_dec, y = xb
        opt.zero_grad(set_to_none=True)
        loss = F.mse_loss(model(x_enc, m_enc, x_dec, m_dec), y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    model.train()
    train_step(batches[0])
    if phases:
        # The step cut like keel's `phases` mode: median ms of each part over the timed steps.
        names = ["forward", "loss", "backward", "clip_grad_norm_", "adam"]
        times = {n: [] for n in names}
        for xb in batches[1:]:
            x_enc, m_enc, x_dec, m_dec, y = xb
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            out = model(x_enc, m_enc, x_dec, m_dec)
            t1 = time.perf_counter()
            loss = F.mse_loss(out, y)
            loss.item()
            t2 = time.perf_counter()
            loss.backward()
            t3 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            t4 = time.perf_counter()
            opt.step()
            t5 = time.perf_counter()
            for n, a, b_ in zip(names, [t, t1, t2, t3, t4], [t1, t2, t3, t4, t5]):
                times[n].append((b_ - a) * 1e3)
        total = 0.0
        for n in names:
            m = statistics.median(times[n])
            total += m
            print(f"| {n} | {m:.1f} |")
        print(f"| sum | {total:.1f} |")
        return
    train_ms = []
    for xb in batches[1:]:
        t = time.perf_counter()
        train_step(xb)
        train_ms.append((time.perf_counter() - t) * 1e3)
    model.eval()
    fwd_ms = []
    with torch.no_grad():
        for xb in batches[1:]:
            t = time.perf_counter()
            model(*xb[:4]).sum().item()
            fwd_ms.append((time.perf_counter() - t) * 1e3)
    tm, fm = statistics.median(train_ms), statistics.median(fwd_ms)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"| {size} | torch {torch.__version__} | {threads} | {params} | {b} | {steps} | {tm:.1f} | {b / (tm / 1e3):.0f} "
          f"| {fm:.1f} | {b / (fm / 1e3):.0f} | {rss:.0f} |")


if __name__ == "__main__":
    main()
