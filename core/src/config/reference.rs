//! The documented form of the configuration: every key with its default, its rule and why it exists.
//!
//! One table feeds `keel config default` (commented RON) and docs/CONFIG.md, and a test checks the
//! table against the schema, so that the documentation cannot drift from the code.

use super::Config;

/// One documented key.
pub struct KeyDoc {
    /// Section name, e.g. `reconnect`.
    pub section: &'static str,
    /// Key within the section.
    pub key: &'static str,
    /// What it does and when to change it.
    pub doc: &'static str,
    /// The allowed values.
    pub rule: &'static str,
    value: fn(&Config) -> String,
}

impl KeyDoc {
    /// The key's value in `config`, written as RON.
    pub fn value_in(&self, config: &Config) -> String {
        (self.value)(config)
    }
}

macro_rules! key {
    ($section:ident . $key:ident, $rule:expr, $doc:expr) => {
        KeyDoc {
            section: stringify!($section),
            key: stringify!($key),
            doc: $doc,
            rule: $rule,
            value: |c: &Config| ron::to_string(&c.$section.$key).unwrap_or_else(|e| format!("/* {e} */")),
        }
    };
}

/// Every key of the schema, in file order.
pub const KEYS: &[KeyDoc] = &[
    key!(
        stream.url,
        "wss://HOST[:PORT][/PATH] (TLS is mandatory; port 1..=65535)",
        "Base URL of the stream endpoint; `/stream?streams=a/b` is appended, so a Binance URL copied with `/ws/...` or `?streams=` in it is refused (the streams go in stream.streams). Point it at `keel exchange` for offline runs."
    ),
    key!(
        stream.streams,
        "non-empty list of `symbol@type` or all-market `!...@arr`",
        "Streams to subscribe, as Binance names them (btcusdt@aggTrade, btcusdt@kline_1m, btcusdt@depth@100ms, ..., and the all-market arrays !miniTicker@arr, !ticker@arr, !ticker_1h@arr, !ticker_4h@arr, !ticker_1d@arr)."
    ),
    key!(
        stream.out_dir,
        "non-empty path",
        "Where recorded events go: one CSV file per stream and UTC day, append-only."
    ),
    key!(
        stream.max_message_bytes,
        "> 0",
        "Largest accepted WebSocket message; a larger one closes the transport (and reconnects). Raise only for legitimately large depth snapshots."
    ),
    key!(
        stream.stall_after_ms,
        "> heartbeat.ping_interval_ms",
        "A subscribed stream silent this long is resubscribed; silent again for as long, the connection is replaced. Pings cannot see this: the socket is alive, the stream is not."
    ),
    key!(
        stream.rollover_after_ms,
        "> 0 and < 86400000",
        "Replace the connection this long after it opened, before Binance's 24 h cutoff does it for us."
    ),
    key!(
        stream.max_control_per_second,
        "1..=5",
        "Outgoing control messages (pings, pongs, SUBSCRIBE...) per second per connection; Binance disconnects above 5."
    ),
    key!(
        stream.max_streams_per_connection,
        "1..=1024",
        "Streams per connection; Binance allows 1024. More streams are split over several connections of at most this many each, a symbol's streams kept on one connection where they fit."
    ),
    key!(
        stream.max_connections,
        "1..=60",
        "At most this many connections at once; stream.streams may hold up to max_streams_per_connection x max_connections names. The connections share Binance's per-IP limits (300 connection attempts per 5 minutes: one pool of reconnect.max_attempts_per_window for all, granted to whichever connection is ready; REST weight: one budget for all)."
    ),
    key!(
        stream.restart_distance,
        "> 0",
        "An id more than this far below the last one seen on its stream may mean the server restarted its numbering (an exchange restarted, a venue reset ids after maintenance). Closer ids are late frames or replays and are dropped as duplicates. The overlap a make-before-break hand-over replays never counts: the new transport's events are compared with what the old one had delivered when they arrived, so keep this above the ids the busiest stream advances while one connection lags the other (seconds)."
    ),
    key!(
        stream.restart_confirm,
        "1..=1000",
        "Consecutive far-below ids on one connection that confirm a numbering restart; the first event of a new connection confirms at once. Confirmed: the stream's tracking and recovery start over (logged at warn, counted in keel_sequence_restarts_total) and the held events are delivered."
    ),
    key!(reconnect.initial_delay_ms, "> 0", "Delay before the first retry of an outage."),
    key!(reconnect.multiplier, ">= 1.0", "Each further failure multiplies the delay by this (exponential backoff)."),
    key!(reconnect.max_delay_ms, ">= reconnect.initial_delay_ms", "Cap on the delay before jitter."),
    key!(
        reconnect.jitter,
        "0.0..=1.0",
        "Fraction of each delay that is random: the delay is drawn from [d*(1-jitter), d]. Spreads out clients that lost the same server at once."
    ),
    key!(
        reconnect.max_consecutive_failures,
        "> 0",
        "Give up (exit with the reason) after this many failures in a row. A rate-limited failure (HTTP 429 or 418, a 1008 close) counts but never gives up: keel waits as the server asked and tries again, because a process that exited would be restarted into the ban, which Binance lengthens."
    ),
    key!(
        reconnect.stable_after_ms,
        "> 0",
        "A connection must stay up this long before the failure count resets, so that a server that accepts and drops at once cannot cause a reconnect storm."
    ),
    key!(
        reconnect.max_attempts_per_window,
        "1..=300",
        "Connection attempts allowed in any window, for the whole run (all connections of a split run together); Binance allows 300 per 5 minutes per IP. Enforced by waiting, never by failing."
    ),
    key!(reconnect.attempt_window_ms, ">= 300000", "Length of that sliding window."),
    key!(
        reconnect.rate_limit_floor_ms,
        "> 0",
        "Minimum wait after close code 1008 or HTTP 429 without Retry-After (HTTP 418, an IP ban, waits 5x this). Coming back sooner extends Binance's ban."
    ),
    key!(
        heartbeat.ping_interval_ms,
        "> 0",
        "Send a ping after this long; detects half-open sockets that TCP alone would keep for hours."
    ),
    key!(
        heartbeat.pong_timeout_ms,
        "> 0 and < heartbeat.ping_interval_ms",
        "The connection is dead when neither a pong nor any other frame arrives this long after a ping."
    ),
    key!(tls.handshake_timeout_ms, "> 0", "TCP connect + TLS handshake + WebSocket upgrade must finish within this."),
    key!(
        tls.min_version,
        "\"1.2\" or \"1.3\"",
        "Lowest TLS version offered. SSLv2/3 and TLS 1.0/1.1 cannot be configured."
    ),
    key!(
        tls.ca_file,
        "None or Some(\"path.pem\")",
        "An extra trusted root (PEM, one or more certificates; or one DER certificate), for `keel exchange` or a private endpoint. Verification is never disabled. `keel config check` reads it as `keel stream` does (a relative path from the directory keel runs in)."
    ),
    key!(
        rest.url,
        "https://HOST[:PORT], no path (TLS is mandatory; port 1..=65535); not api.binance.com when stream.url is another server's (unless rest.backfill is false and no diff-depth stream is listed)",
        "Base URL of Binance's REST API (`/api/v3/aggTrades`, `/api/v3/historicalTrades`, `/api/v3/klines`, `/api/v3/depth`); point it at `keel exchange` (the REST URL it prints) for offline runs. Left at Binance's while stream.url points at a server other than stream.binance.com or data-stream.binance.vision, the configuration is refused: gaps would be filled with Binance's trades under that server's ids. The `tls` settings apply to it too."
    ),
    key!(
        rest.weight_per_minute,
        "1..=6000",
        "keel's share of Binance's request weight per minute (6000 per IP, shared with every other client on the address). Backfill (weight 4 per 1000 trades) and book snapshots draw from it; requests wait, never exceed it."
    ),
    key!(
        rest.backfill,
        "true or false",
        "Fetch aggTrade and trade ids and closed klines missed during an outage over REST and deliver them in order; off: gaps are reported as abandoned."
    ),
    key!(
        rest.book_depth_limit,
        "5, 10, 20, 50, 100, 500, 1000 or 5000",
        "Levels per side of an order-book snapshot (`/api/v3/depth?limit=`). Weight: <=100: 5, 500: 25, 1000: 50, 5000: 250."
    ),
    key!(
        rest.max_held_events,
        "> 0",
        "Live events (aggTrades, trades, klines) held back per stream while an earlier gap is being fetched; when full, the gap is abandoned (reported) and the held events released."
    ),
    key!(
        scaler.init_scale,
        "Auto or Fixed(x > 0)",
        "Starting loss scale; Auto sizes it from the model's parameter count (larger models start lower)."
    ),
    key!(
        scaler.growth_factor,
        "> 1.0",
        "Multiply the scale by this after growth_interval clean steps. PyTorch uses 2.0; keel's 1.2 grows gently so the scale does not race into fp16 overflow."
    ),
    key!(scaler.backoff_factor, "> 0.0 and < 1.0", "Multiply the scale by this on overflow (the step is skipped)."),
    key!(scaler.growth_interval, "> 0", "Clean steps between growths."),
    key!(
        scaler.min_scale,
        "finite, > 0",
        "The scale never goes below this. Overflows that persist at this floor are not a scaling problem: keel stops with a diagnosis."
    ),
    key!(scaler.max_scale, "finite, >= scaler.min_scale", "The scale never goes above this (2^24 by default)."),
    key!(
        scaler.hysteresis,
        "> 0",
        "Back off only after this many overflows (1 = on every overflow, as PyTorch; DeepSpeed/Megatron use 2)."
    ),
    key!(
        scaler.warn_threshold,
        "finite, > 0",
        "Warn when the scale exceeds this; the original failure passed 100000 before the loss turned NaN."
    ),
    key!(scaler.max_consecutive_overflows, "> 0", "This many overflows in a row reset the scale to reset_scale."),
    key!(
        scaler.reset_scale,
        "Auto or Fixed(x > 0)",
        "Where a reset jumps down to (never up). Auto = the size-based initial scale."
    ),
    key!(
        scaler.anomalous_epochs_before_reset,
        "> 0",
        "This many anomalous epochs in a row (scale above warn_threshold or overflow rate above the limit) reset the scale."
    ),
    key!(
        scaler.anomalous_overflow_rate,
        "> 0.0 and <= 1.0",
        "An epoch with a higher share of overflowing steps is anomalous."
    ),
    key!(train.seq_len, "> 0", "Encoder input length (time steps)."),
    key!(train.label_len, "<= train.seq_len", "Known steps given to the decoder before the forecast."),
    key!(train.pred_len, "> 0", "Steps forecast."),
    key!(train.d_model, "> 0", "Model width (512 in the paper; `--model-size small` uses 64 on CPU)."),
    key!(train.n_heads, "> 0, divides d_model", "Attention heads."),
    key!(train.e_layers, "> 0", "Encoder layers (with distilling between them)."),
    key!(train.d_layers, "> 0", "Decoder layers."),
    key!(train.d_ff, "> 0", "Feed-forward width."),
    key!(train.dropout, "0.0..1.0", "Dropout probability."),
    key!(train.factor, "> 0", "ProbSparse sampling factor c: c*ceil(ln L) keys sampled and queries kept."),
    key!(
        train.learning_rate,
        "finite, > 0",
        "Adam learning rate, halved after every epoch as in the reference implementation."
    ),
    key!(train.batch_size, "> 0", "Windows per batch."),
    key!(train.epochs, "> 0", "Upper bound on epochs (early stopping may end sooner)."),
    key!(train.patience, "> 0", "Early stopping: epochs without validation improvement."),
    key!(train.clip_grad_norm, ">= 0.0", "Global gradient-norm clip applied after unscaling; 0 disables it."),
    key!(train.dtype, "F32, F16 or Bf16", "Forward/backward dtype; master weights stay f32. Bf16 needs a GPU."),
    key!(train.target, "a column name", "Column to forecast."),
    key!(train.features, "M, S or MS", "Informer's feature mode: many-to-many, target only, many-to-target."),
    key!(train.seed, "any u64", "Seed of weight init, dropout and shuffling."),
    key!(
        train.checkpoint_every,
        "> 0",
        "`keel train` replaces its checkpoint (atomically) after every this many epochs, and after the last one; `keel train --resume DIR` continues from the latest."
    ),
    key!(
        train.instance_norm,
        "true or false",
        "Reversible instance normalization: each input window is centred on its last value and scaled by its own spread, and the forecast is mapped back. Off reproduces the reference Informer; on keeps a trending series (prices leaving the training range) from being forecast far off."
    ),
];

const SECTIONS: &[(&str, &str)] = &[
    ("stream", "What to stream and where to write it."),
    ("reconnect", "Exponential backoff with jitter and Binance's connection-attempt budget."),
    ("heartbeat", "The client's own liveness check (Binance's server pings are answered regardless)."),
    ("tls", "TLS of the WebSocket client; certificates and host names are always verified."),
    (
        "rest",
        "Binance's REST API: backfill of aggTrades, trades and closed klines, and order-book snapshots, within a request weight budget.",
    ),
    ("scaler", "Dynamic loss scaling and the scale monitor."),
    ("train", "The Informer model and its optimizer."),
];

/// The whole configuration as RON with a comment above every key (`keel config default`).
pub fn commented(config: &Config) -> String {
    let mut out =
        String::from("// keel configuration. Every key is optional: a missing key takes the value shown here.\n(\n");
    for (section, about) in SECTIONS {
        out.push_str(&format!("    // {about}\n    {section}: (\n"));
        for k in KEYS.iter().filter(|k| k.section == *section) {
            out.push_str(&format!("        // {} Allowed: {}.\n", k.doc, k.rule));
            out.push_str(&format!("        {}: {},\n", k.key, k.value_in(config)));
        }
        out.push_str("    ),\n");
    }
    out.push_str(")\n");
    out
}

/// docs/CONFIG.md: every key with its default, rule and purpose.
pub fn markdown() -> String {
    let defaults = Config::default();
    let mut out = String::from(
        "# keel configuration reference\n\n\
         Generated by `keel config docs` from the same table as `keel config default`; a test fails when\n\
         this file is out of date. The file format is RON; every key is optional and a missing key\n\
         (or section) takes its default, so old files keep loading. An unknown key, or a value that does\n\
         not parse, is an error naming the key, its line and column and how to write it (`Some(...)`\n\
         for `tls.ca_file`, `Fixed(65536.0)` or `Auto` for a scale). `keel config check FILE` prints\n\
         every invalid value with its allowed range and, in the same run, reads the paths the config\n\
         names (`tls.ca_file`, `stream.out_dir`) as `keel stream` would. It also prints a caution,\n\
         without failing, for a legal value that would keep a feed down for hours (a backoff cap or a\n\
         rate-limit floor above an hour, a stall or stability threshold no connection lives to reach);\n\
         `keel stream` logs the same cautions when it starts.\n",
    );
    for (section, about) in SECTIONS {
        out.push_str(&format!(
            "\n## `{section}`\n\n{about}\n\n| key | default | allowed | what it does |\n| --- | --- | --- | --- |\n"
        ));
        for k in KEYS.iter().filter(|k| k.section == *section) {
            out.push_str(&format!(
                "| `{}.{}` | `{}` | {} | {} |\n",
                k.section,
                k.key,
                k.value_in(&defaults),
                k.rule.replace('|', "\\|"),
                k.doc
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn commented_default_loads_back_to_the_defaults() {
        let text = commented(&Config::default());
        assert_eq!(Config::from_ron(&text).expect("commented default must load"), Config::default());
    }

    #[test]
    fn the_table_covers_exactly_the_schema() {
        // The serialized default lists every field the schema has; the table must list the same.
        let value: ron::Value = ron::from_str(&Config::default().to_ron()).expect("defaults parse as a RON value");
        let mut schema = BTreeSet::new();
        let ron::Value::Map(sections) = value else { panic!("config is not a map") };
        for (section, fields) in sections.iter() {
            let ron::Value::String(section) = section else { panic!("section name {section:?}") };
            let ron::Value::Map(fields) = fields else { panic!("section {section} is not a map") };
            for (key, _) in fields.iter() {
                let ron::Value::String(key) = key else { panic!("key {key:?}") };
                schema.insert(format!("{section}.{key}"));
            }
        }
        let table: BTreeSet<String> = KEYS.iter().map(|k| format!("{}.{}", k.section, k.key)).collect();
        assert_eq!(table, schema);
        assert!(KEYS.iter().all(|k| SECTIONS.iter().any(|(s, _)| *s == k.section)));
    }
}
