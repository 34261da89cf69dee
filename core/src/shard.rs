//! Splitting `stream.streams` over several connections (Binance carries at most 1024 streams on
//! one connection).
//!
//! Each shard becomes its own [`crate::connection::Connection`]: its own transport, backoff,
//! heartbeat and gap tracking, and its own seed, so that the jitter differs and a mass disconnect
//! does not bring every shard back in the same millisecond. [`plan`] gives each shard its config
//! (its streams) and its seed; the adapter drives them.
//!
//! The connection-attempt budget (`reconnect.max_attempts_per_window` per `attempt_window_ms`;
//! Binance: 300 per 5 minutes) is per IP, so the shards of a run share one [`AttemptPool`] instead
//! of each keeping a fixed share: one failing connection among idle ones may use the whole budget,
//! and all of them together never more. The machines are made with
//! [`crate::connection::Connection::new_pooled`]: a machine ready to open a transport says so
//! (`wants_attempt`), the driver tells the pool ([`AttemptPool::handle_wants`]), and feeds
//! `Input::AttemptGranted` to each connection [`AttemptPool::poll_grant`] names, oldest wait first.
//! An attempt is delayed until the window has room, never dropped.
//!
//! The split keeps a symbol's streams on one connection where they fit: a symbol's `@depth` and
//! `@aggTrade` then lose and regain their transport together, so a gap, its backfill and a book
//! resync stay on one connection's timeline, and one bad connection touches as few symbols as it
//! can. Symbols are packed greedily in the order of their first stream in the config; a symbol
//! with more streams than a connection carries is cut into full connections. Should that packing
//! need more than `stream.max_connections` connections (only with tiny shard sizes), the split
//! falls back to plain contiguous chunks of the symbol-ordered list, which always fits. Inside a
//! shard the streams keep their config order.

use crate::backoff::AttemptBudget;
use crate::config::{Config, ReconnectConfig};
use crate::time::Timestamp;
use std::collections::BTreeMap;

/// One connection's part of the run: what its machine is built from.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardPlan {
    /// 0-based; shard 0 of a one-shard run is the whole run.
    pub index: usize,
    /// The config of this shard's machine: `stream.streams` is its part, the rest the run's.
    pub config: Config,
    /// The seed of this shard's jitter.
    pub seed: u64,
}

/// The shards of `config` (validated by the caller): one per connection, in order.
///
/// One shard gets `config` and `seed` unchanged, so a run that fits on one connection behaves (and
/// traces) exactly as before the split existed.
pub fn plan(config: &Config, seed: u64) -> Vec<ShardPlan> {
    let s = &config.stream;
    let parts = split_streams(&s.streams, s.max_streams_per_connection as usize, s.max_connections as usize);
    parts
        .into_iter()
        .enumerate()
        .map(|(index, streams)| {
            let mut config = config.clone();
            config.stream.streams = streams;
            ShardPlan { index, config, seed: shard_seed(seed, index) }
        })
        .collect()
}

/// The connection-attempt budget shared by the connections of a run (see the module docs):
/// at most `reconnect.max_attempts_per_window` grants in any `attempt_window_ms`, handed to the
/// waiting connections oldest wait first (ties: lowest index), each wait granted exactly once.
///
/// Sans-IO like the machines: the driver reports each connection's wait after draining it, asks
/// [`Self::poll_grant`] until it says `None`, and wakes at [`Self::poll_timeout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPool {
    budget: AttemptBudget,
    /// Waiting connections: (waiting since, index). A few (at most `stream.max_connections`).
    waiting: Vec<(Timestamp, usize)>,
}

impl AttemptPool {
    /// The pool of the `reconnect` section's budget.
    pub fn new(config: &ReconnectConfig) -> Self {
        AttemptPool { budget: AttemptBudget::from_config(config), waiting: Vec::new() }
    }

    /// Connection `index` waits for a grant since `since` (`Connection::wants_attempt`), or waits for
    /// none (`None`: it was granted, stopped, or lost the transport it wanted to replace). Call it
    /// after every drain of that connection; repeating the same wait changes nothing.
    pub fn handle_wants(&mut self, index: usize, since: Option<Timestamp>) {
        let at = self.waiting.iter().position(|(_, i)| *i == index);
        match (at, since) {
            (Some(k), Some(since)) => self.waiting[k].0 = since,
            (Some(k), None) => {
                self.waiting.swap_remove(k);
            }
            (None, Some(since)) => self.waiting.push((since, index)),
            (None, None) => {}
        }
    }

    /// The connection that may open its transport at `now` (feed it `Input::AttemptGranted` at
    /// `now`), its attempt counted in the budget; `None` when nobody waits or the window is full.
    /// Call until `None`.
    #[must_use]
    pub fn poll_grant(&mut self, now: Timestamp) -> Option<usize> {
        let (k, _) = self.waiting.iter().enumerate().min_by_key(|(_, w)| **w)?;
        if self.budget.next_allowed(now) > now {
            return None;
        }
        let (_, index) = self.waiting.swap_remove(k);
        self.budget.record(now);
        Some(index)
    }

    /// When [`Self::poll_grant`] can grant the next waiting connection; `None` when nobody waits.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let since = self.waiting.iter().map(|(since, _)| *since).min()?;
        Some(self.budget.next_allowed(since))
    }

    /// How many connections wait for a grant.
    pub fn waiting(&self) -> usize {
        self.waiting.len()
    }

    /// Attempts granted within the window ending at `now`.
    pub fn used(&self, now: Timestamp) -> usize {
        self.budget.used(now)
    }
}

/// Shard `index`'s seed: `seed` itself for shard 0, a well-mixed derivative for the others.
pub fn shard_seed(seed: u64, index: usize) -> u64 {
    if index == 0 {
        return seed;
    }
    // splitmix64's finalizer over seed + index * golden ratio: neighbouring indexes get unrelated seeds.
    let mut z = seed.wrapping_add((index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The symbol of a stream name (`btcusdt@depth@100ms` -> `btcusdt`). An all-market array
/// (`!miniTicker@arr`) has none: its "symbol" `!miniTicker` is its own group, which no symbol shares.
fn symbol(stream: &str) -> &str {
    stream.split_once('@').map_or(stream, |(s, _)| s)
}

/// Splits `streams` into parts of at most `per_connection` (at least 1), a symbol's streams kept
/// together where they fit (see the module docs). Every stream lands in exactly one part, each part
/// keeps the config order, no part is empty, and there are at most `max_connections` parts whenever
/// `streams.len() <= per_connection * max_connections`.
pub fn split_streams(streams: &[String], per_connection: usize, max_connections: usize) -> Vec<Vec<String>> {
    let size = per_connection.max(1);
    // Indexes grouped by symbol, groups in order of first appearance.
    let mut group_of: BTreeMap<&str, usize> = BTreeMap::new();
    let mut groups: Vec<Vec<usize>> = Vec::new();
    for (i, s) in streams.iter().enumerate() {
        let g = *group_of.entry(symbol(s)).or_insert_with(|| {
            groups.push(Vec::new());
            groups.len() - 1
        });
        groups[g].push(i);
    }
    let mut parts: Vec<Vec<usize>> = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for group in &groups {
        if current.len() + group.len() > size && !current.is_empty() {
            parts.push(std::mem::take(&mut current));
        }
        let mut rest = group.as_slice();
        while rest.len() > size {
            parts.push(rest[..size].to_vec());
            rest = &rest[size..];
        }
        current.extend_from_slice(rest);
    }
    if !current.is_empty() {
        parts.push(current);
    }
    if parts.len() > max_connections {
        // Symbol packing wastes room at the ends of parts; contiguous chunks waste none.
        let ordered: Vec<usize> = groups.concat();
        parts = ordered.chunks(size).map(<[usize]>::to_vec).collect();
    }
    parts
        .into_iter()
        .map(|mut part| {
            part.sort_unstable();
            part.into_iter().map(|i| streams[i].clone()).collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quickcheck::{QuickCheck, TestResult};
    use std::collections::BTreeSet;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_symbols_streams_share_a_connection_in_config_order() {
        let streams = names(&["a@trade", "b@trade", "a@depth", "c@trade", "b@depth"]);
        let table: &[(usize, usize, &[&[&str]])] = &[
            // Everything fits on one connection: unchanged.
            (1024, 8, &[&["a@trade", "b@trade", "a@depth", "c@trade", "b@depth"]]),
            (2, 3, &[&["a@trade", "a@depth"], &["b@trade", "b@depth"], &["c@trade"]]),
            // a (2) + b (2) fit into 4, c starts the next one.
            (4, 2, &[&["a@trade", "b@trade", "a@depth", "b@depth"], &["c@trade"]]),
            // 3 per connection: a (2) then b does not fit; b + c.
            (3, 2, &[&["a@trade", "a@depth"], &["b@trade", "c@trade", "b@depth"]]),
            // A symbol larger than a connection is cut into full ones.
            (1, 5, &[&["a@trade"], &["a@depth"], &["b@trade"], &["b@depth"], &["c@trade"]]),
        ];
        for (size, max, want) in table {
            let got = split_streams(&streams, *size, *max);
            let want: Vec<Vec<String>> = want.iter().map(|p| names(p)).collect();
            assert_eq!(got, want, "size {size}, max {max}");
        }
        // Packing by symbol would need 4 connections ([a a][b][c c][d]); 3 are allowed: contiguous
        // chunks of the symbol-ordered list.
        let streams = names(&["a@trade", "a@depth", "b@trade", "c@trade", "c@depth", "d@trade"]);
        assert_eq!(split_streams(&streams, 2, 4).len(), 4);
        let got = split_streams(&streams, 2, 3);
        let want = vec![names(&["a@trade", "a@depth"]), names(&["b@trade", "c@trade"]), names(&["c@depth", "d@trade"])];
        assert_eq!(got, want);
    }

    #[test]
    fn an_all_market_array_is_a_group_of_its_own() {
        let streams =
            names(&["btcusdt@aggTrade", "!miniTicker@arr", "btcusdt@ticker", "!ticker_1h@arr", "ethusdt@trade"]);
        assert_eq!(
            split_streams(&streams, 2, 8),
            vec![
                names(&["btcusdt@aggTrade", "btcusdt@ticker"]),
                names(&["!miniTicker@arr", "!ticker_1h@arr"]),
                names(&["ethusdt@trade"]),
            ]
        );
    }

    #[test]
    fn every_usdt_pair_fits_two_connections() {
        // ~400 symbols x 3 streams, the README's example.
        let streams: Vec<String> =
            (0..400).flat_map(|i| ["aggTrade", "depth@100ms", "kline_1m"].map(|k| format!("sym{i}usdt@{k}"))).collect();
        let parts = split_streams(&streams, 1024, 8);
        assert_eq!(parts.iter().map(Vec::len).collect::<Vec<_>>(), vec![1023, 177]);
        assert_eq!(parts[0][1020..], names(&["sym340usdt@aggTrade", "sym340usdt@depth@100ms", "sym340usdt@kline_1m"]));
    }

    #[test]
    fn one_shard_plan_is_the_config_itself() {
        let cfg = Config::default();
        assert_eq!(plan(&cfg, 42), vec![ShardPlan { index: 0, config: cfg.clone(), seed: 42 }]);
        let mut big = cfg.clone();
        big.stream.max_streams_per_connection = 1;
        big.stream.max_connections = 3;
        big.stream.streams = names(&["a@trade", "b@trade", "c@trade"]);
        let plans = plan(&big, 42);
        assert_eq!(plans.iter().map(|p| p.index).collect::<Vec<_>>(), vec![0, 1, 2]);
        assert_eq!(
            plans.iter().map(|p| p.config.stream.streams.clone()).collect::<Vec<_>>(),
            [names(&["a@trade"]), names(&["b@trade"]), names(&["c@trade"])]
        );
        // 300 attempts per 5 minutes per IP: the run's budget, shared through an AttemptPool, not split.
        assert!(plans.iter().all(|p| p.config.reconnect.max_attempts_per_window == 300));
        assert!(plans.iter().all(|p| p.config.validate().is_ok()));
        let seeds: BTreeSet<u64> = plans.iter().map(|p| p.seed).collect();
        assert_eq!((plans[0].seed, seeds.len()), (42, 3), "distinct seeds, shard 0 keeps --seed");
    }

    fn pool(limit: u32, window_ms: u64) -> AttemptPool {
        let config = ReconnectConfig {
            max_attempts_per_window: limit,
            attempt_window_ms: window_ms,
            ..ReconnectConfig::default()
        };
        AttemptPool::new(&config)
    }

    fn t(ms: u64) -> Timestamp {
        Timestamp::from_millis(ms)
    }

    #[test]
    fn one_failing_connection_may_use_the_whole_pool_and_waits_are_granted_oldest_first() {
        // 2 attempts per 10 s for the whole run.
        let mut p = pool(2, 10_000);
        assert_eq!((p.poll_grant(t(0)), p.poll_timeout()), (None, None), "nobody waits");
        // Connection 0 fails twice while 1 and 2 are live: it gets both attempts (a fixed third
        // each would have given it none after its first).
        p.handle_wants(0, Some(t(0)));
        p.handle_wants(0, Some(t(0))); // repeated: the same wait
        assert_eq!((p.poll_grant(t(0)), p.poll_grant(t(0))), (Some(0), None));
        p.handle_wants(0, Some(t(500)));
        assert_eq!(p.poll_grant(t(500)), Some(0));
        // The window is full: 1 (since 600) and 0 (since 700) wait until the first grant leaves it.
        p.handle_wants(1, Some(t(600)));
        p.handle_wants(0, Some(t(700)));
        assert_eq!((p.poll_grant(t(700)), p.waiting(), p.used(t(700))), (None, 2, 2));
        assert_eq!(p.poll_timeout(), Some(t(10_000)));
        assert_eq!((p.poll_grant(t(10_000)), p.poll_grant(t(10_000))), (Some(1), None));
        assert_eq!(p.poll_timeout(), Some(t(10_500)));
        // 2 waited and stopped waiting (it stopped, say): it is never granted.
        p.handle_wants(2, Some(t(9_000)));
        p.handle_wants(2, None);
        assert_eq!((p.poll_grant(t(10_500)), p.poll_grant(t(10_500)), p.waiting()), (Some(0), None, 0));
    }

    #[test]
    fn the_pool_never_overfills_a_window_and_grants_every_wait() {
        // Each connection waits again `gap` ms (under 4 s: windows of 1 to 20 s fill up) after its
        // last grant, its gaps drawn; the driver
        // grants at every event time and sleeps until the next want or the pool's timeout.
        fn prop(limit: u8, window_s: u8, gaps: Vec<Vec<u16>>) -> TestResult {
            let gaps: Vec<Vec<u64>> =
                gaps.into_iter().take(6).map(|g| g.into_iter().map(|ms| u64::from(ms % 4000)).collect()).collect();
            if gaps.is_empty() {
                return TestResult::discard();
            }
            let (limit, window) = (u32::from(limit % 5) + 1, (u64::from(window_s % 20) + 1) * 1000);
            let mut p = pool(limit, window);
            let n = gaps.len();
            let mut next: Vec<usize> = vec![0; n];
            let mut wants_at: Vec<Option<u64>> = gaps.iter().map(|g| g.first().copied()).collect();
            let mut waiting: Vec<Option<u64>> = vec![None; n];
            let mut grants: Vec<u64> = Vec::new();
            let mut now = 0;
            loop {
                let pool_at = p.poll_timeout().map(|t| t.as_millis());
                let Some(at) = wants_at.iter().flatten().copied().chain(pool_at).min() else { break };
                now = at.max(now);
                for i in 0..n {
                    if wants_at[i] == Some(now) {
                        wants_at[i] = None;
                        waiting[i] = Some(now);
                        p.handle_wants(i, Some(t(now)));
                    }
                }
                while let Some(i) = p.poll_grant(t(now)) {
                    let Some(since) = waiting[i].take() else { return TestResult::error(format!("{i} not waiting")) };
                    if since > now {
                        return TestResult::error("granted before it waited");
                    }
                    grants.push(now);
                    p.handle_wants(i, None);
                    next[i] += 1;
                    wants_at[i] = gaps[i].get(next[i]).map(|g| now + g);
                }
            }
            let wanted: usize = gaps.iter().map(Vec::len).sum();
            if grants.len() != wanted || waiting.iter().any(Option::is_some) {
                return TestResult::error(format!("{} of {wanted} waits granted", grants.len()));
            }
            for (k, start) in grants.iter().enumerate() {
                let in_window = grants[k..].iter().take_while(|g| **g < start + window).count();
                if in_window > limit as usize {
                    return TestResult::error(format!("{in_window} grants in the window from {start} (limit {limit})"));
                }
            }
            TestResult::passed()
        }
        QuickCheck::new().tests(500).quickcheck(prop as fn(u8, u8, Vec<Vec<u16>>) -> TestResult);
    }

    #[test]
    fn pooled_machines_never_open_more_than_the_budget_and_every_one_gets_back() {
        use crate::classify::TransportError;
        use crate::connection::{Connection, Input, Output};
        // N real pooled machines driven through one pool in virtual time. Each Open is answered 10 ms
        // later by the machine's next scripted outcome: refused, or opened and reset after a while;
        // once its script is done it stays up. Every Open must have been granted, no 5-minute window
        // may hold more Opens than the budget, and in the end every machine is live again.
        fn prop(limit: u8, scripts: Vec<Vec<u8>>) -> TestResult {
            let scripts: Vec<Vec<u8>> = scripts.into_iter().take(4).map(|s| s.into_iter().take(12).collect()).collect();
            if scripts.is_empty() {
                return TestResult::discard();
            }
            let mut cfg = Config::default();
            cfg.stream.streams = vec!["btcusdt@aggTrade".into()];
            cfg.reconnect.max_attempts_per_window = u32::from(limit % 4) + 1;
            cfg.reconnect.initial_delay_ms = 100;
            cfg.reconnect.max_delay_ms = 1_000;
            // Only the script ends transports within the 2 simulated days (4 machines x 13 attempts at 1
            // per 5 minutes need 4.3 h).
            const HORIZON: u64 = 2 * 86_400_000;
            cfg.heartbeat.ping_interval_ms = 4 * HORIZON;
            cfg.heartbeat.pong_timeout_ms = HORIZON;
            cfg.stream.stall_after_ms = 5 * HORIZON;
            cfg.stream.rollover_after_ms = 6 * HORIZON;
            let (limit, window) = (cfg.reconnect.max_attempts_per_window as usize, cfg.reconnect.attempt_window_ms);
            let mut pool = AttemptPool::new(&cfg.reconnect);
            let mut machines: Vec<Connection> =
                (0..scripts.len()).map(|i| Connection::new_pooled(&cfg, i as u64, t(0))).collect();
            let mut next = vec![0usize; scripts.len()];
            let mut pending: Vec<(u64, usize, Input)> = Vec::new();
            let (mut opens, mut grants, mut now) = (Vec::new(), 0usize, 0u64);
            for _ in 0..10_000 {
                // Drain every machine, answer its Opens, tell the pool what it waits for, grant.
                for (i, m) in machines.iter_mut().enumerate() {
                    while let Some(out) = m.poll_output() {
                        if let Output::Open { id, .. } = out {
                            opens.push(now);
                            match scripts[i].get(next[i]) {
                                Some(o) if o % 2 == 0 => {
                                    let error = TransportError::Refused("scripted".into());
                                    pending.push((now + 10, i, Input::Failed { id, error }));
                                }
                                Some(o) => {
                                    pending.push((now + 10, i, Input::Opened { id }));
                                    let error = TransportError::Reset("scripted".into());
                                    pending.push((now + 10 + u64::from(*o) * 1000, i, Input::Failed { id, error }));
                                }
                                None => pending.push((now + 10, i, Input::Opened { id })),
                            }
                            next[i] += 1;
                        }
                    }
                    pool.handle_wants(i, m.wants_attempt());
                }
                let mut granted = false;
                while let Some(i) = pool.poll_grant(t(now)) {
                    machines[i].handle_input(Input::AttemptGranted, t(now));
                    grants += 1;
                    granted = true;
                }
                if granted {
                    continue;
                }
                // The next event: a scripted input, a machine's deadline, or the pool's.
                let input_at = pending.iter().map(|(at, _, _)| *at).min();
                let timers = machines.iter().filter_map(Connection::poll_timeout).map(|t| t.as_millis());
                let Some(at) = timers.chain(input_at).chain(pool.poll_timeout().map(|t| t.as_millis())).min() else {
                    break;
                };
                if at > HORIZON {
                    break;
                }
                now = at.max(now);
                if let Some(k) = pending.iter().position(|(at, _, _)| *at <= now) {
                    let (_, i, input) = pending.remove(k);
                    machines[i].handle_input(input, t(now));
                } else {
                    for m in &mut machines {
                        if m.poll_timeout().is_some_and(|d| d.as_millis() <= now) {
                            m.handle_timeout(t(now));
                        }
                    }
                }
            }
            if opens.len() != grants {
                return TestResult::error(format!("{} opens, {grants} grants", opens.len()));
            }
            for (k, start) in opens.iter().enumerate() {
                let in_window = opens[k..].iter().take_while(|o| **o < start + window).count();
                if in_window > limit {
                    return TestResult::error(format!(
                        "{in_window} opens in the window from {start} ms (limit {limit})"
                    ));
                }
            }
            let all_back = machines.iter().all(Connection::is_live) && pool.waiting() == 0;
            let wanted: usize = scripts.iter().map(|s| s.len() + 1).sum();
            if !all_back || opens.len() != wanted {
                return TestResult::error(format!("{} of {wanted} attempts made; all live: {all_back}", opens.len()));
            }
            TestResult::passed()
        }
        QuickCheck::new().tests(200).quickcheck(prop as fn(u8, Vec<Vec<u8>>) -> TestResult);
    }

    /// Streams from small numbers: `symbol` in 0..8, `kind` in 0..6, duplicates removed.
    fn streams_from(raw: &[(u8, u8)]) -> Vec<String> {
        const KINDS: [&str; 6] = ["trade", "aggTrade", "depth", "bookTicker", "kline_1m", "kline_1h"];
        let mut seen = BTreeSet::new();
        raw.iter()
            .map(|(s, k)| format!("s{}@{}", s % 8, KINDS[usize::from(k % 6)]))
            .filter(|s| seen.insert(s.clone()))
            .collect()
    }

    #[test]
    fn split_keeps_every_stream_once_in_order_within_the_size() {
        fn prop(raw: Vec<(u8, u8)>, size: u8, max: u8) -> TestResult {
            let streams = streams_from(&raw);
            let (size, max) = (usize::from(size % 12) + 1, usize::from(max % 12) + 1);
            let parts = split_streams(&streams, size, max);
            let position = |s: &String| streams.iter().position(|x| x == s);
            let mut all: Vec<&String> = parts.iter().flatten().collect();
            all.sort();
            let mut want: Vec<&String> = streams.iter().collect();
            want.sort();
            let in_order = parts.iter().all(|p| p.windows(2).all(|w| position(&w[0]) < position(&w[1])));
            let fits = streams.len() > size * max || parts.len() <= max;
            TestResult::from_bool(
                all == want && in_order && fits && parts.iter().all(|p| !p.is_empty() && p.len() <= size),
            )
        }
        QuickCheck::new().tests(500).quickcheck(prop as fn(Vec<(u8, u8)>, u8, u8) -> TestResult);
    }

    #[test]
    fn a_symbol_that_fits_is_never_cut() {
        fn prop(raw: Vec<(u8, u8)>, size: u8) -> bool {
            let streams = streams_from(&raw);
            let size = usize::from(size % 12) + 1;
            // Enough connections: the symbol packing is kept.
            let parts = split_streams(&streams, size, streams.len().max(1));
            let mut per_symbol: BTreeMap<&str, BTreeSet<usize>> = BTreeMap::new();
            for (i, p) in parts.iter().enumerate() {
                for s in p {
                    per_symbol.entry(symbol(s)).or_default().insert(i);
                }
            }
            per_symbol.iter().all(|(sym, shards)| {
                let count = streams.iter().filter(|s| symbol(s) == *sym).count();
                count > size || shards.len() == 1
            })
        }
        QuickCheck::new().tests(500).quickcheck(prop as fn(Vec<(u8, u8)>, u8) -> bool);
    }
}
