//! A seed's fault profile: which fault kinds are on and how often (swarm testing).
//!
//! Swarm testing (Groce et al. 2012, and TigerBeetle's VOPR) switches whole fault kinds off per
//! seed: a run where only resets happen explores deeper reset sequences than a run where every
//! fault competes for the same hours. Rates are exact ratios drawn from the seed, applied with
//! [`Rng::chance`] or as integer mean intervals, so that no float rounding enters the test case and
//! a seed reproduces the same run on every platform.

use crate::rest_sim::RestProfile;
use keel_core::config::Config;
use keel_core::rng::Rng;
use std::fmt;

/// An exact probability `num / den`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ratio {
    /// Numerator.
    pub num: u64,
    /// Denominator (> 0).
    pub den: u64,
}

impl Ratio {
    /// `true` with probability `num / den`.
    pub fn draw(self, rng: &mut Rng) -> bool {
        rng.chance(self.num, self.den)
    }

    /// A waiting time in ms with mean `den / num` seconds, drawn uniformly from `[1, 2 * mean)`.
    /// Integer-only on purpose: `ln` of a float may differ in the last bit between platforms.
    pub fn interval_ms(self, rng: &mut Rng) -> u64 {
        let mean = (self.den * 1000 / self.num.max(1)).max(1);
        1 + rng.below(2 * mean - 1)
    }
}

impl fmt::Display for Ratio {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.num, self.den)
    }
}

/// What one fault's ratio applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Drawn on every connection attempt.
    PerConnect,
    /// A rate per simulated second (scheduled as an event with that mean interval).
    PerSecond,
    /// Drawn for every market frame sent to a client.
    PerFrame,
}

/// Every fault the model network and exchange can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Fault {
    /// Connect: TCP connection refused.
    Refused,
    /// Connect: DNS lookup fails.
    Dns,
    /// Connect: TLS handshake fails.
    TlsHandshake,
    /// Connect: the TLS stream ends without close_notify during the handshake.
    HandshakeEof,
    /// Connect: no answer at all (the core's handshake timeout must fire).
    HandshakeHang,
    /// Connect: HTTP 429 with a Retry-After.
    Http429,
    /// Connect: HTTP 418 (IP ban) with a Retry-After.
    Http418,
    /// Connect: certificate rejected or HTTP 403 (fatal: the machine must give up at once).
    Fatal,
    /// Open transport: abrupt TCP reset.
    Reset,
    /// Open transport: TLS unexpected EOF.
    UnexpectedEof,
    /// Open transport: TLS bad record MAC.
    BadRecordMac,
    /// Open transport: half-open stall (no data, no pongs, nothing received).
    HalfOpen,
    /// Open transport: server close 1001 (going away).
    Close1001,
    /// Open transport: server close 1008 (policy violation).
    Close1008,
    /// Open transport: `serverShutdown` notice, then a close a few seconds later.
    ServerShutdown,
    /// Open transport: a message larger than the maximum.
    TooLarge,
    /// Whole network: an outage of seconds to hours (connects fail, open transports die).
    Outage,
    /// Market: no trades on a stream for minutes (the stall detector must act).
    QuietMarket,
    /// Frame: a malformed frame is sent before this one.
    Malformed,
    /// Frame: sent twice.
    Duplicate,
    /// Frame: swapped with the next frame of the same stream.
    Reorder,
    /// Frame: never sent to this client (a gap the client must report).
    Lost,
    /// Market: the exchange restarts the ids of a trade stream (aggTrade, trade), far below the current ones (a
    /// restarted server, a venue resetting ids after maintenance).
    IdRestart,
}

impl Fault {
    /// All kinds, in the order the profile prints them.
    pub const ALL: [Fault; 23] = [
        Fault::Refused,
        Fault::Dns,
        Fault::TlsHandshake,
        Fault::HandshakeEof,
        Fault::HandshakeHang,
        Fault::Http429,
        Fault::Http418,
        Fault::Fatal,
        Fault::Reset,
        Fault::UnexpectedEof,
        Fault::BadRecordMac,
        Fault::HalfOpen,
        Fault::Close1001,
        Fault::Close1008,
        Fault::ServerShutdown,
        Fault::TooLarge,
        Fault::Outage,
        Fault::QuietMarket,
        Fault::Malformed,
        Fault::Duplicate,
        Fault::Reorder,
        Fault::Lost,
        Fault::IdRestart,
    ];

    /// Short name used in the printed profile.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Refused => "refused",
            Fault::Dns => "dns",
            Fault::TlsHandshake => "tls",
            Fault::HandshakeEof => "hs_eof",
            Fault::HandshakeHang => "hs_hang",
            Fault::Http429 => "http429",
            Fault::Http418 => "http418",
            Fault::Fatal => "fatal",
            Fault::Reset => "reset",
            Fault::UnexpectedEof => "eof",
            Fault::BadRecordMac => "bad_mac",
            Fault::HalfOpen => "half_open",
            Fault::Close1001 => "close1001",
            Fault::Close1008 => "close1008",
            Fault::ServerShutdown => "shutdown",
            Fault::TooLarge => "too_large",
            Fault::Outage => "outage",
            Fault::QuietMarket => "quiet",
            Fault::Malformed => "malformed",
            Fault::Duplicate => "dup",
            Fault::Reorder => "reorder",
            Fault::Lost => "lost",
            Fault::IdRestart => "id_restart",
        }
    }

    /// What the ratio of this kind applies to.
    pub fn scope(self) -> Scope {
        use Fault::*;
        match self {
            Refused | Dns | TlsHandshake | HandshakeEof | HandshakeHang | Http429 | Http418 | Fatal => {
                Scope::PerConnect
            }
            Reset | UnexpectedEof | BadRecordMac | HalfOpen | Close1001 | Close1008 | ServerShutdown | TooLarge
            | Outage | QuietMarket | IdRestart => Scope::PerSecond,
            Malformed | Duplicate | Reorder | Lost => Scope::PerFrame,
        }
    }

    /// Chance (num, den) that a seed switches this kind on. Fatal faults end a machine's life,
    /// so they are on rarely; everything else is a coin flip.
    fn on_chance(self) -> (u64, u64) {
        match self {
            Fault::Fatal => (1, 10),
            _ => (1, 2),
        }
    }

    /// Range of the ratio's denominator (numerator 1): per attempt, seconds, or frames.
    fn denominator_range(self) -> (u64, u64) {
        match self {
            Fault::Fatal => (200, 5_000),
            Fault::Http418 => (20, 400),
            f if f.scope() == Scope::PerConnect => (2, 40),
            // Open-transport faults: from every 30 s to every 12 h.
            Fault::Outage => (1_800, 43_200),
            Fault::QuietMarket => (1_800, 43_200),
            Fault::IdRestart => (1_800, 43_200),
            f if f.scope() == Scope::PerSecond => (30, 43_200),
            _ => (20, 2_000),
        }
    }
}

/// Everything a seed decides before the run starts.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultProfile {
    /// The seed this profile was drawn from.
    pub seed: u64,
    /// Ratio of each fault kind that is on; kinds not listed are off.
    pub faults: Vec<(Fault, Ratio)>,
    /// One-way network latency.
    pub latency_ms: u64,
    /// Extra random latency per message, `[0, jitter_ms]` (frames of one transport stay in order).
    pub latency_jitter_ms: u64,
    /// Mean interval between aggTrades on each stream.
    pub trade_interval_ms: u64,
    /// The exchange cuts connections this long after accepting them (24 h, or shorter so that a
    /// day of simulation sees many rollovers).
    pub cutoff_ms: u64,
    /// Call `handle_timeout` at steps where nothing is due, and require that it does nothing
    /// (the API promises a spurious call is a harmless no-op; adapters wake up early).
    pub spurious_timeouts: bool,
    /// Shortest and longest outage.
    pub outage_ms: (u64, u64),
    /// The machine's own seed (jitter).
    pub machine_seed: u64,
    /// Where the virtual clock starts (the `Timestamp` origin is arbitrary; so is this).
    pub clock_start_ms: u64,
    /// The configuration the machine runs with.
    pub config: Config,
    /// The REST side (issue 9), drawn from its own generator.
    pub rest: RestProfile,
}

impl FaultProfile {
    /// Draws the whole test case from `seed`.
    pub fn draw(seed: u64) -> FaultProfile {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_FA17);
        let mut faults = Vec::new();
        // IdRestart came later: it is drawn last (below), so that every other choice of a seed is
        // what it was before it existed.
        for kind in Fault::ALL.into_iter().filter(|k| *k != Fault::IdRestart) {
            let (n, d) = kind.on_chance();
            if rng.chance(n, d) {
                let (lo, hi) = kind.denominator_range();
                faults.push((kind, Ratio { num: 1, den: lo + rng.below(hi - lo + 1) }));
            }
        }
        let latency_ms = [1, 5, 20, 80, 250][rng.below(5) as usize];
        let latency_jitter_ms = [0, 2, 10, 50, 200][rng.below(5) as usize];
        // Sparse on purpose (Binance sends several per second): every frame costs a decode, and the
        // faults, not the volume, are what is under test. Below stall_after / 2 so that only a quiet
        // market fault makes a stream stall.
        let trade_interval_ms = [10_000, 20_000, 45_000][rng.below(3) as usize];
        let outage_ms = (1_000, [60_000, 600_000, 3 * 3_600_000][rng.below(3) as usize]);
        let machine_seed = rng.next_u64();
        let clock_start_ms = rng.below(1 << 40);

        let mut config = Config::default();
        config.stream.url = "wss://sim.invalid:9443".to_string();
        let mut streams = vec!["btcusdt@aggTrade".to_string()];
        if rng.chance(1, 2) {
            streams.push("ethusdt@aggTrade".to_string());
        }
        if rng.chance(1, 3) {
            streams.push("btcusdt@kline_1m".to_string());
        }
        config.stream.streams = streams;
        let r = &mut config.reconnect;
        r.initial_delay_ms = [100, 500, 1_000, 5_000][rng.below(4) as usize];
        r.max_delay_ms = r.initial_delay_ms.max([10_000, 60_000, 120_000][rng.below(3) as usize]);
        r.multiplier = [1.0, 1.5, 2.0, 3.0][rng.below(4) as usize];
        r.jitter = [0.0, 0.25, 0.5, 1.0][rng.below(4) as usize];
        r.max_consecutive_failures = [10, 100, 1_000][rng.below(3) as usize];
        let h = &mut config.heartbeat;
        h.ping_interval_ms = [10_000, 30_000, 60_000][rng.below(3) as usize];
        h.pong_timeout_ms = h.ping_interval_ms / [2, 3, 6][rng.below(3) as usize];
        config.stream.stall_after_ms = (h.ping_interval_ms + 1).max(120_000);
        config.tls.handshake_timeout_ms = [5_000, 10_000, 30_000][rng.below(3) as usize];
        let cutoff_ms = if rng.chance(1, 3) {
            [3_600_000, 2 * 3_600_000, 5 * 3_600_000][rng.below(3) as usize]
        } else {
            24 * 3_600_000
        };
        // Binance cuts at 24 h and keel rolls over at 23 h 30 m: keep that margin (5 minutes
        // when the seed shortens the cutoff to an hour).
        config.stream.rollover_after_ms = cutoff_ms - if cutoff_ms > 3_600_000 { 1_800_000 } else { 300_000 };

        let spurious_timeouts = rng.chance(1, 2);
        // Drawn last, so that adding them changed no earlier choice of any seed.
        config.stream.restart_confirm = [1, 3, 8][rng.below(3) as usize];
        config.stream.restart_distance = [1_000, 100_000][rng.below(2) as usize];
        if rng.chance(1, 2) {
            let (lo, hi) = Fault::IdRestart.denominator_range();
            faults.push((Fault::IdRestart, Ratio { num: 1, den: lo + rng.below(hi - lo + 1) }));
        }
        // Drawn after everything else too: a ticker stream (unsequenced, like a kline) for faults to hit.
        if rng.chance(1, 3) {
            let ticker = ["btcusdt@ticker", "btcusdt@miniTicker"][rng.below(2) as usize];
            config.stream.streams.push(ticker.to_string());
        }
        // Drawn after everything else: a `@trade` stream (ids `t`, backfilled over historicalTrades,
        // weight 25) in about a third of the seeds; seeds without one keep every earlier choice.
        let trade = rng.chance(1, 3);
        let rest = RestProfile::draw(seed);
        config.rest.url = "https://sim.invalid".to_string();
        config.rest.max_held_events = rest.max_held_events;
        config.rest.weight_per_minute = rest.weight_per_minute;
        if rest.depth {
            config.stream.streams.push("btcusdt@depth@100ms".to_string());
        }
        // Last in the list, so that the model market draws the other streams' first ids as before.
        if trade {
            config.stream.streams.push("btcusdt@trade".to_string());
        }
        FaultProfile {
            rest,
            seed,
            spurious_timeouts,
            faults,
            latency_ms,
            latency_jitter_ms,
            trade_interval_ms,
            cutoff_ms,
            outage_ms,
            machine_seed,
            clock_start_ms,
            config,
        }
    }

    /// The ratio of `kind` when it is on for this seed.
    pub fn rate(&self, kind: Fault) -> Option<Ratio> {
        self.faults.iter().find(|(k, _)| *k == kind).map(|(_, r)| *r)
    }
}

impl fmt::Display for FaultProfile {
    /// One line: the seed first, then every drawn choice.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed={} latency={}ms+{}ms trade_every={}ms cutoff={}h spurious_timeouts={} outage={}..{}ms",
            self.seed,
            self.latency_ms,
            self.latency_jitter_ms,
            self.trade_interval_ms,
            self.cutoff_ms / 3_600_000,
            self.spurious_timeouts,
            self.outage_ms.0,
            self.outage_ms.1
        )?;
        let r = &self.config.reconnect;
        let h = &self.config.heartbeat;
        write!(
            f,
            " backoff={}..{}ms x{} jitter={} max_fail={} ping={}ms/{}ms handshake={}ms restart={}/{} streams={}",
            r.initial_delay_ms,
            r.max_delay_ms,
            r.multiplier,
            r.jitter,
            r.max_consecutive_failures,
            h.ping_interval_ms,
            h.pong_timeout_ms,
            self.config.tls.handshake_timeout_ms,
            self.config.stream.restart_distance,
            self.config.stream.restart_confirm,
            self.config.stream.streams.join(",")
        )?;
        write!(f, " {}", self.rest)?;
        write!(f, " faults:")?;
        if self.faults.is_empty() {
            write!(f, " none")?;
        }
        for (kind, ratio) in &self.faults {
            let unit = match kind.scope() {
                Scope::PerConnect => "/connect",
                Scope::PerSecond => "/s",
                Scope::PerFrame => "/frame",
            };
            write!(f, " {}={}{}", kind.name(), ratio, unit)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_profile_and_configs_are_valid() {
        for seed in 0..300 {
            let p = FaultProfile::draw(seed);
            assert_eq!(p, FaultProfile::draw(seed));
            assert!(p.config.validate().is_ok(), "seed {seed}: {:?}", p.config.validate());
            assert!(p.to_string().starts_with(&format!("seed={seed} ")));
        }
    }

    #[test]
    fn swarm_switches_kinds_on_and_off() {
        // Over many seeds every kind is sometimes on and sometimes off.
        let profiles: Vec<FaultProfile> = (0..400).map(FaultProfile::draw).collect();
        for kind in Fault::ALL {
            let on = profiles.iter().filter(|p| p.rate(kind).is_some()).count();
            assert!(on > 0 && on < 400, "{kind:?} on in {on} of 400 seeds");
        }
    }

    #[test]
    fn about_a_third_of_the_seeds_draw_a_trade_stream_last() {
        let with: Vec<FaultProfile> = (0..600)
            .map(FaultProfile::draw)
            .filter(|p| p.config.stream.streams.iter().any(|s| s.ends_with("@trade")))
            .collect();
        assert!((150..250).contains(&with.len()), "{} of 600", with.len());
        for p in &with {
            assert_eq!(p.config.stream.streams.last().map(String::as_str), Some("btcusdt@trade"), "{p}");
        }
    }

    #[test]
    fn intervals_have_the_ratio_as_mean() {
        let mut rng = Rng::new(3);
        let r = Ratio { num: 1, den: 60 };
        let n = 20_000;
        let total: u64 = (0..n).map(|_| r.interval_ms(&mut rng)).sum();
        let mean = total / n;
        assert!((58_000..62_000).contains(&mean), "mean {mean}");
    }
}
