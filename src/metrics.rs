//! Prometheus metrics of the edge. Counters are bumped once per request at its end; gauges
//! that describe state (shards, stick tables) are filled in when `/metrics` is scraped.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Requests by route, pool, shard and status class (`2xx` … `5xx`).
    pub requests: IntCounterVec,
    /// Time from choosing a shard to the end of its response, by pool.
    pub upstream_latency: HistogramVec,
    /// Upgraded (WebSocket) connections open now.
    pub tunnels_open: IntGauge,
    /// Client connections counted against `limits.max_connections` (set every few seconds).
    pub connections_open: IntGauge,
    /// Times a listener stopped accepting because `limits.max_connections` was reached (or
    /// the process ran out of file descriptors).
    pub connections_limited: prometheus::IntCounter,
    /// Client TLS handshakes that failed (bad or no ClientHello, no shared cipher, reset).
    pub tls_handshake_errors: prometheus::IntCounter,
    /// Connections closed by a deadline, by what was late (`request_head`, `client_write`,
    /// `shard_write`, `response`, `tunnel_quiet`, `tunnel_stuck`).
    pub timeouts: IntCounterVec,
    /// Requests refused at the edge before any backend saw them, by reason.
    pub rejected: IntCounterVec,
    /// Connections a shard refused (passive health), by pool and shard.
    pub connect_failures: IntCounterVec,
    /// Rooms moved off a shard that was down or gone, by pool.
    pub room_moves: IntCounterVec,
    /// DNS lookups of discovery, by pool and result (`ok`, `no_records`, `error`).
    pub dns_lookups: IntCounterVec,
    /// Active health check rounds, by pool and result (`ok`, `fail`).
    pub health_checks: IntCounterVec,
    /// Config reloads, by result (`ok`, `error`).
    pub config_reloads: IntCounterVec,
    /// TLS certificate reloads, by result (`ok`, `error`).
    pub tls_reloads: IntCounterVec,
    /// Stick-table entries, by pool (set at scrape).
    pub stick_entries: IntGaugeVec,
    /// 1 for the state each shard is in, by pool, shard and state (set at scrape).
    pub shard_state: IntGaugeVec,
    /// Relayed UDP datagrams and bytes, by zone and direction (`in`: client to target, `out`).
    pub media_datagrams: IntCounterVec,
    pub media_bytes: IntCounterVec,
    /// Datagrams the relay dropped, by zone and reason.
    pub media_drops: IntCounterVec,
    /// Open relay flows, by zone.
    pub media_flows: IntGaugeVec,
    /// Lookups of relay targets, by zone and result (`ok`, `no_records`, `error`).
    pub media_lookups: IntCounterVec,
    /// The in-process SFU (see `crate::sfu::driver`).
    pub sfu: SfuMetrics,
    /// Stick-table replication (see `crate::peers::driver`).
    pub peers: PeerMetrics,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let requests = counter(
            "shardgate_requests_total",
            "Requests by route, pool, shard and status class",
            &["route", "pool", "shard", "class"],
        );
        let rejected = counter(
            "shardgate_rejected_requests_total",
            "Requests refused at the edge before reaching a backend",
            &["reason"],
        );
        let connect_failures = counter(
            "shardgate_upstream_connect_failures_total",
            "Connections a shard refused or timed out (passive health)",
            &["pool", "shard"],
        );
        let room_moves = counter(
            "shardgate_room_moves_total",
            "Rooms moved off a shard that was down or gone",
            &["pool"],
        );
        let dns_lookups = counter(
            "shardgate_dns_lookups_total",
            "DNS lookups of discovery by pool and result (ok, no_records, error)",
            &["pool", "result"],
        );
        let health_checks = counter(
            "shardgate_health_checks_total",
            "Active health check rounds by pool and result (ok, fail)",
            &["pool", "result"],
        );
        let config_reloads = counter(
            "shardgate_config_reloads_total",
            "Config reloads by result (ok, error)",
            &["result"],
        );
        let tls_reloads = counter(
            "shardgate_tls_reloads_total",
            "TLS certificate reloads by result (ok, error)",
            &["result"],
        );
        let upstream_latency = HistogramVec::new(
            HistogramOpts::new(
                "shardgate_upstream_latency_seconds",
                "Time from choosing a shard to the end of its response (tunnels excluded)",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0,
            ]),
            &["pool"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(upstream_latency.clone()))
            .expect("unique metric");
        let tunnels_open = IntGauge::new("shardgate_tunnels_open", "Open upgraded connections")
            .expect("valid metric");
        registry
            .register(Box::new(tunnels_open.clone()))
            .expect("unique metric");
        let connections_open = IntGauge::new(
            "shardgate_connections_open",
            "Client connections counted against limits.max_connections",
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections_open.clone()))
            .expect("unique metric");
        let connections_limited = prometheus::IntCounter::new(
            "shardgate_connections_limited_total",
            "Times the listeners stopped accepting at limits.max_connections or out of descriptors",
        )
        .expect("valid metric");
        registry
            .register(Box::new(connections_limited.clone()))
            .expect("unique metric");
        let tls_handshake_errors = prometheus::IntCounter::new(
            "shardgate_tls_handshake_errors_total",
            "Client TLS handshakes that failed",
        )
        .expect("valid metric");
        registry
            .register(Box::new(tls_handshake_errors.clone()))
            .expect("unique metric");
        let timeouts = counter(
            "shardgate_timeouts_total",
            "Connections closed by a deadline, by what was late",
            &["kind"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let stick_entries = gauge(
            "shardgate_stick_table_entries",
            "Rooms remembered in the stick table",
            &["pool"],
        );
        let shard_state = gauge(
            "shardgate_shard_state",
            "1 for the state each shard is in",
            &["pool", "shard", "state"],
        );
        let media_datagrams = counter(
            "shardgate_media_datagrams_total",
            "Relayed UDP datagrams by zone and direction (in: client to target, out: back)",
            &["zone", "direction"],
        );
        let media_bytes = counter(
            "shardgate_media_bytes_total",
            "Relayed UDP payload bytes by zone and direction",
            &["zone", "direction"],
        );
        let media_drops = counter(
            "shardgate_media_drops_total",
            "UDP datagrams the relay dropped, by zone and reason",
            &["zone", "reason"],
        );
        let media_flows = gauge("shardgate_media_flows", "Open relay flows", &["zone"]);
        let media_lookups = counter(
            "shardgate_media_target_lookups_total",
            "DNS lookups of relay targets by zone and result (ok, no_records, error)",
            &["zone", "result"],
        );
        let sfu = SfuMetrics {
            rooms: gauge("shardgate_sfu_rooms", "Rooms open in the SFU", &[])
                .with_label_values(&[] as &[&str]),
            peers: gauge(
                "shardgate_sfu_peers",
                "Peers in the SFU by role (participant, whip, whep)",
                &["role"],
            ),
            tracks: gauge(
                "shardgate_sfu_tracks",
                "Tracks in the SFU: published (in) and being received (out)",
                &["direction"],
            ),
            packets: counter(
                "shardgate_sfu_rtp_packets_total",
                "RTP packets received from publishers (in) and sent to subscribers (out)",
                &["direction"],
            ),
            bytes: counter(
                "shardgate_sfu_rtp_bytes_total",
                "RTP bytes received from publishers (in) and sent to subscribers (out)",
                &["direction"],
            ),
            drops: counter(
                "shardgate_sfu_dropped_datagrams_total",
                "Datagrams the SFU dropped: unknown_session, malformed, send_buffer_full",
                &["reason"],
            ),
            nacks: counter(
                "shardgate_sfu_nacks_total",
                "NACKs subscribers sent (retransmissions asked for)",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            keyframe_requests: counter(
                "shardgate_sfu_keyframe_requests_total",
                "Keyframe requests (PLI) the SFU sent to publishers",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            peer_faults: counter(
                "shardgate_sfu_peer_faults_total",
                "Peers ended, or offers refused, by an internal fault (a panic in the WebRTC stack)",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            estimated_bitrate: gauge(
                "shardgate_sfu_estimated_downlink_bps",
                "Subscribers' downlink as estimated by congestion control: min, median, max",
                &["stat"],
            ),
        };
        let peers = PeerMetrics {
            connections: gauge(
                "shardgate_peers_connections",
                "Connections to other replicas by state (handshaking, syncing, synced)",
                &["state"],
            ),
            synced: gauge(
                "shardgate_peer_synced",
                "1 once the other replica's whole table arrived on the connection, by replica",
                &["replica"],
            ),
            entries: gauge(
                "shardgate_peer_entries",
                "Stick-table entries exchanged on the connection to each replica (sent, received)",
                &["replica", "direction"],
            ),
            silence: gauge(
                "shardgate_peer_silence_seconds",
                "Seconds since the last frame from each replica (pinged every 5 s; closed at 15 s)",
                &["replica"],
            ),
            entries_total: counter(
                "shardgate_peers_entries_total",
                "Stick-table entries sent to and received from other replicas",
                &["direction"],
            ),
            conflicts_lost: counter(
                "shardgate_peers_conflicts_lost_total",
                "Received placements that replaced this replica's (a room placed on two shards at once)",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            rooms_reconnected: counter(
                "shardgate_peers_rooms_reconnected_total",
                "Rooms whose tunnels here were closed because another replica's placement of the room won (their clients reconnect to the winner)",
                &[],
            )
            .with_label_values(&[] as &[&str]),
            closed: counter(
                "shardgate_peers_closed_total",
                "Peer connections closed by this replica: silent (nothing heard for 15 s), slow (its send queue full)",
                &["reason"],
            ),
            refused: counter(
                "shardgate_peers_refused_total",
                "Peer connections refused in the handshake (wrong secret, other protocol)",
                &[],
            )
            .with_label_values(&[] as &[&str]),
        };
        Metrics {
            sfu,
            peers,
            registry,
            media_datagrams,
            media_bytes,
            media_drops,
            media_flows,
            media_lookups,
            requests,
            upstream_latency,
            tunnels_open,
            connections_open,
            connections_limited,
            tls_handshake_errors,
            timeouts,
            rejected,
            connect_failures,
            room_moves,
            dns_lookups,
            health_checks,
            config_reloads,
            tls_reloads,
            stick_entries,
            shard_state,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The SFU's metrics; its driver updates them about once a second from the core's counters.
pub struct SfuMetrics {
    pub rooms: IntGauge,
    pub peers: IntGaugeVec,
    pub tracks: IntGaugeVec,
    pub packets: IntCounterVec,
    pub bytes: IntCounterVec,
    pub drops: IntCounterVec,
    pub nacks: prometheus::IntCounter,
    pub keyframe_requests: prometheus::IntCounter,
    pub peer_faults: prometheus::IntCounter,
    pub estimated_bitrate: IntGaugeVec,
}

/// Stick-table replication's metrics; its driver sets them once a second.
pub struct PeerMetrics {
    pub connections: IntGaugeVec,
    pub synced: IntGaugeVec,
    pub entries: IntGaugeVec,
    pub silence: IntGaugeVec,
    pub entries_total: IntCounterVec,
    pub conflicts_lost: prometheus::IntCounter,
    pub rooms_reconnected: prometheus::IntCounter,
    pub refused: prometheus::IntCounter,
    pub closed: IntCounterVec,
}

/// `2xx`, `4xx`, …; `none` when no response was written.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        Some(100..=199) => "1xx",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(500..=599) => "5xx",
        _ => "none",
    }
}
