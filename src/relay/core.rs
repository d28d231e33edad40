//! The relay's flow table, pure: which client, on which public port, talks to which target
//! through which upstream socket. The driver passes each datagram's addresses and the time in
//! and gets a verdict out (where to send it, or why to drop it), plus events for upstream sockets
//! to close; it owns the sockets and moves the bytes, which never pass through here.
//!
//! Like a NAT: a client's first datagram to a public port opens a flow to that port's target,
//! with its own upstream socket (so the target tells clients apart by source port); the target's
//! replies on that socket go back to the client from the same public port. Datagrams are only
//! ever sent to a port's configured target, or to the client that opened the flow: a reply from
//! any other address is dropped, so the relay reflects nothing to third parties.

use crate::config::PortRange;
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub type FlowId = u64;

/// Why a datagram was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The public port's target does not resolve (yet).
    NoTarget,
    /// The source IP holds its maximum of flows already.
    FlowLimit,
    /// The zone holds its maximum of flows already.
    TableFull,
    /// A port outside the zone's range (a driver bug, counted rather than trusted).
    UnknownPort,
    /// A reply on an upstream socket whose flow has ended.
    UnknownFlow,
    /// A datagram on a flow's upstream socket from anyone but the flow's target.
    NotFromTarget,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::NoTarget,
        DropReason::FlowLimit,
        DropReason::TableFull,
        DropReason::UnknownPort,
        DropReason::UnknownFlow,
        DropReason::NotFromTarget,
    ];

    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            DropReason::NoTarget => "no_target",
            DropReason::FlowLimit => "flow_limit",
            DropReason::TableFull => "table_full",
            DropReason::UnknownPort => "unknown_port",
            DropReason::UnknownFlow => "unknown_flow",
            DropReason::NotFromTarget => "not_from_target",
        }
    }
}

/// What to do with one datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Send it from the flow's upstream socket to `to`; `new`: open that socket first.
    ToTarget {
        flow: FlowId,
        to: SocketAddr,
        new: bool,
    },
    /// Send it from public port `port` to the client `to`.
    ToClient {
        port: u16,
        to: SocketAddr,
    },
    Drop(DropReason),
}

/// A flow ended (idle, or its port's target changed): close its upstream socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed(pub FlowId);

#[derive(Debug)]
struct Flow {
    port: u16,
    client: SocketAddr,
    target: SocketAddr,
    last_seen: Instant,
}

/// Flows held per source IP, shared by the cores of one zone (one per relay thread: the kernel
/// spreads a source's flows over them), so the per-source limit holds for the whole zone.
#[derive(Debug, Default)]
pub struct SourceCounts(Mutex<HashMap<IpAddr, u32>>);

impl SourceCounts {
    /// Counts one more flow of `ip`, unless it holds `max` already.
    fn take(&self, ip: IpAddr, max: u32) -> bool {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.entry(ip).or_insert(0);
        if *n >= max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, ip: IpAddr) {
        let mut held = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = held.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                held.remove(&ip);
            }
        }
    }

    #[cfg(test)]
    fn total(&self) -> usize {
        let held = self.0.lock().unwrap();
        assert!(held.values().all(|&n| n > 0));
        held.values().map(|&n| n as usize).sum()
    }
}

/// Limits of one zone.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub idle: Duration,
    pub max_flows_per_source: u32,
    pub max_flows: usize,
}

/// One zone's flows (one per relay thread: sockets with SO_REUSEPORT keep a client on one).
#[derive(Debug)]
pub struct Core {
    ports: PortRange,
    limits: Limits,
    /// The resolved target of each port, by index in the range.
    targets: Vec<Option<SocketAddr>>,
    by_client: HashMap<(u16, SocketAddr), FlowId>,
    flows: HashMap<FlowId, Flow>,
    per_source: Arc<SourceCounts>,
    /// One entry per live flow (its earliest possible expiry), plus entries of flows that ended
    /// early, dropped when they come up.
    deadlines: BinaryHeap<Reverse<(Instant, FlowId)>>,
    closed: VecDeque<Closed>,
    next_id: FlowId,
}

impl Core {
    pub fn new(ports: PortRange, limits: Limits, per_source: Arc<SourceCounts>) -> Self {
        Core {
            ports,
            limits,
            targets: vec![None; ports.len()],
            by_client: HashMap::new(),
            flows: HashMap::new(),
            per_source,
            deadlines: BinaryHeap::new(),
            closed: VecDeque::new(),
            next_id: 1,
        }
    }

    /// A datagram from `client` to public port `port`.
    pub fn from_client(&mut self, port: u16, client: SocketAddr, now: Instant) -> Verdict {
        if !self.ports.contains(port) {
            return Verdict::Drop(DropReason::UnknownPort);
        }
        if let Some(&flow) = self.by_client.get(&(port, client)) {
            let f = self.flows.get_mut(&flow).expect("indexed flows exist");
            f.last_seen = now;
            return Verdict::ToTarget {
                flow,
                to: f.target,
                new: false,
            };
        }
        let Some(target) = self.targets[usize::from(port - self.ports.first)] else {
            return Verdict::Drop(DropReason::NoTarget);
        };
        if self.flows.len() >= self.limits.max_flows {
            return Verdict::Drop(DropReason::TableFull);
        }
        if !self
            .per_source
            .take(client.ip(), self.limits.max_flows_per_source)
        {
            return Verdict::Drop(DropReason::FlowLimit);
        }
        let flow = self.next_id;
        self.next_id += 1;
        self.flows.insert(
            flow,
            Flow {
                port,
                client,
                target,
                last_seen: now,
            },
        );
        self.by_client.insert((port, client), flow);
        self.deadlines.push(Reverse((now + self.limits.idle, flow)));
        Verdict::ToTarget {
            flow,
            to: target,
            new: true,
        }
    }

    /// A datagram from `from` on the upstream socket of `flow`.
    pub fn from_target(&mut self, flow: FlowId, from: SocketAddr, now: Instant) -> Verdict {
        let Some(f) = self.flows.get_mut(&flow) else {
            return Verdict::Drop(DropReason::UnknownFlow);
        };
        if from != f.target {
            return Verdict::Drop(DropReason::NotFromTarget);
        }
        f.last_seen = now;
        Verdict::ToClient {
            port: f.port,
            to: f.client,
        }
    }

    /// Sets the target of every port (by index; `None`: does not resolve). Flows of a port
    /// whose target changed end: the next datagram opens a flow to the new address.
    pub fn set_targets(&mut self, targets: &[Option<SocketAddr>]) {
        let changed: Vec<u16> = self
            .ports
            .ports()
            .zip(self.targets.iter_mut().zip(targets))
            .filter_map(|(port, (old, new))| {
                (*old != *new).then(|| {
                    *old = *new;
                    port
                })
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        let ending: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| changed.contains(&f.port))
            .map(|(&id, _)| id)
            .collect();
        for id in ending {
            self.end(id);
        }
    }

    /// Ends the flows idle for `limits.idle` by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, id))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            let Some(f) = self.flows.get(&id) else {
                continue; // ended early
            };
            let expires = f.last_seen + self.limits.idle;
            if expires <= now {
                self.end(id);
            } else {
                self.deadlines.push(Reverse((expires, id)));
            }
        }
    }

    /// When [`Core::handle_timeout`] has work next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadlines.peek().map(|Reverse((at, _))| *at)
    }

    /// The next flow whose upstream socket is to be closed.
    pub fn poll_closed(&mut self) -> Option<Closed> {
        self.closed.pop_front()
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }

    fn end(&mut self, id: FlowId) {
        let Some(f) = self.flows.remove(&id) else {
            return;
        };
        self.by_client.remove(&(f.port, f.client));
        self.per_source.give_back(f.client.ip());
        self.closed.push_back(Closed(id));
    }

    /// Internal consistency, for tests: every index agrees with the flows.
    #[cfg(test)]
    fn check(&self) {
        assert_eq!(self.by_client.len(), self.flows.len());
        assert_eq!(self.per_source.total(), self.flows.len());
        assert!(self.flows.len() <= self.limits.max_flows);
        for (&(port, client), id) in &self.by_client {
            let f = &self.flows[id];
            assert_eq!((f.port, f.client), (port, client));
        }
        let live: std::collections::HashSet<FlowId> = self
            .deadlines
            .iter()
            .map(|Reverse((_, id))| *id)
            .filter(|id| self.flows.contains_key(id))
            .collect();
        assert_eq!(live.len(), self.flows.len(), "every flow has a deadline");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::media::parse_port_range;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            idle: Duration::from_secs(60),
            max_flows_per_source: 3,
            max_flows: 10,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn core() -> Core {
        let mut c = Core::new(
            parse_port_range("30300-30303").unwrap(),
            limits(),
            Arc::default(),
        );
        c.set_targets(&[
            Some(addr("127.0.0.10:10000")),
            Some(addr("127.0.0.11:10000")),
            None,
            Some(addr("127.0.0.13:10000")),
        ]);
        c
    }

    #[test]
    fn a_flow_goes_to_its_ports_target_and_replies_come_back_from_the_port() {
        let mut c = core();
        let now = Instant::now();
        let client = addr("127.0.0.100:5000");
        let Verdict::ToTarget { flow, to, new } = c.from_client(30301, client, now) else {
            panic!()
        };
        assert_eq!((to, new), (addr("127.0.0.11:10000"), true));
        assert_eq!(
            c.from_client(30301, client, now),
            Verdict::ToTarget {
                flow,
                to,
                new: false
            }
        );
        assert_eq!(
            c.from_target(flow, to, now),
            Verdict::ToClient {
                port: 30301,
                to: client
            }
        );
        // Only the target may answer on the flow's socket.
        assert_eq!(
            c.from_target(flow, addr("127.0.0.99:10000"), now),
            Verdict::Drop(DropReason::NotFromTarget)
        );
        assert_eq!(
            c.from_client(30302, client, now),
            Verdict::Drop(DropReason::NoTarget)
        );
        assert_eq!(
            c.from_client(30400, client, now),
            Verdict::Drop(DropReason::UnknownPort)
        );
        c.check();
    }

    #[test]
    fn idle_flows_expire_and_traffic_keeps_them() {
        let mut c = core();
        let t0 = Instant::now();
        let (a, b) = (addr("127.0.0.100:5000"), addr("127.0.0.101:5000"));
        c.from_client(30300, a, t0);
        c.from_client(30300, b, t0);
        let Verdict::ToTarget { flow: fb, .. } =
            c.from_client(30300, b, t0 + Duration::from_secs(50))
        else {
            panic!()
        };
        c.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(c.flows(), 1, "a expired, b was refreshed at 50 s");
        assert!(c.poll_closed().is_some());
        assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_secs(110)));
        c.handle_timeout(t0 + Duration::from_secs(110));
        assert_eq!(c.flows(), 0);
        assert_eq!(c.poll_closed(), Some(Closed(fb)));
        assert_eq!(c.poll_timeout(), None);
        c.check();
    }

    #[test]
    fn a_source_stops_at_its_flow_limit_others_go_on() {
        let mut c = core();
        let now = Instant::now();
        for port in [30300, 30301, 30303] {
            assert!(matches!(
                c.from_client(port, addr("127.0.0.100:5000"), now),
                Verdict::ToTarget { new: true, .. }
            ));
        }
        assert_eq!(
            c.from_client(30300, addr("127.0.0.100:5001"), now),
            Verdict::Drop(DropReason::FlowLimit)
        );
        assert!(matches!(
            c.from_client(30300, addr("127.0.0.101:5000"), now),
            Verdict::ToTarget { new: true, .. }
        ));
        c.check();
    }

    #[test]
    fn a_new_target_address_ends_the_ports_flows() {
        let mut c = core();
        let now = Instant::now();
        let client = addr("127.0.0.100:5000");
        let Verdict::ToTarget { flow, .. } = c.from_client(30300, client, now) else {
            panic!()
        };
        c.from_client(30301, client, now);
        let mut targets = vec![
            Some(addr("127.0.0.20:10000")),
            Some(addr("127.0.0.11:10000")),
            None,
            Some(addr("127.0.0.13:10000")),
        ];
        c.set_targets(&targets);
        assert_eq!(c.poll_closed(), Some(Closed(flow)));
        assert_eq!(c.poll_closed(), None, "port 30301's flow stays");
        assert!(matches!(
            c.from_client(30300, client, now),
            Verdict::ToTarget { new: true, to, .. } if to == addr("127.0.0.20:10000")
        ));
        targets[1] = None;
        c.set_targets(&targets);
        assert_eq!(
            c.from_client(30301, client, now),
            Verdict::Drop(DropReason::NoTarget)
        );
        c.check();
    }

    #[derive(Debug, Clone)]
    enum Op {
        Client { port: u16, ip: u8, sport: u16 },
        Reply { flow: u8, from_target: bool },
        Advance(u16),
        Retarget { index: u8, ip: Option<u8> },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (30299u16..30305, 0u8..4, 0u16..4).prop_map(|(port, ip, sport)| Op::Client { port, ip, sport }),
            4 => (0u8..40, any::<bool>()).prop_map(|(flow, from_target)| Op::Reply { flow, from_target }),
            2 => (0u16..90).prop_map(Op::Advance),
            1 => (0u8..4, proptest::option::of(10u8..13)).prop_map(|(index, ip)| Op::Retarget { index, ip }),
        ]
    }

    proptest! {
        /// Every datagram goes to its flow's target or client, or is dropped with a reason; the
        /// indexes stay consistent; and once everything is idle, no flow or timer is left.
        #[test]
        fn no_leaks_and_every_datagram_accounted_for(ops in proptest::collection::vec(op(), 1..300)) {
            let mut c = core();
            let mut targets: Vec<Option<SocketAddr>> = c.targets.clone();
            let t0 = Instant::now();
            let mut now = t0;
            let mut opened = 0usize;
            let mut closed = 0usize;
            // flow -> (port, client, target), as the driver would know it
            let mut known: HashMap<FlowId, (u16, SocketAddr, SocketAddr)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Client { port, ip, sport } => {
                        let client = SocketAddr::from(([127, 0, 1, ip], 5000 + sport));
                        match c.from_client(port, client, now) {
                            Verdict::ToTarget { flow, to, new } => {
                                let index = usize::from(port - 30300);
                                if new {
                                    opened += 1;
                                    prop_assert_eq!(Some(to), targets[index]);
                                    known.insert(flow, (port, client, to));
                                } else {
                                    prop_assert_eq!(known[&flow], (port, client, to));
                                }
                            }
                            Verdict::ToClient { .. } => prop_assert!(false, "a client datagram went to a client"),
                            Verdict::Drop(_) => {}
                        }
                    }
                    Op::Reply { flow, from_target } => {
                        let id = FlowId::from(flow);
                        let from = match (known.get(&id), from_target) {
                            (Some(&(_, _, target)), true) => target,
                            _ => SocketAddr::from(([127, 0, 2, 1], 9999)),
                        };
                        match c.from_target(id, from, now) {
                            Verdict::ToClient { port, to } => {
                                let (p, client, target) = known[&id];
                                prop_assert_eq!((port, to, from), (p, client, target));
                            }
                            Verdict::ToTarget { .. } => prop_assert!(false, "a reply went to a target"),
                            Verdict::Drop(_) => {}
                        }
                    }
                    Op::Advance(secs) => {
                        now += Duration::from_secs(u64::from(secs));
                        c.handle_timeout(now);
                    }
                    Op::Retarget { index, ip } => {
                        targets[usize::from(index)] = ip.map(|ip| SocketAddr::from(([127, 0, 0, ip], 10000)));
                        c.set_targets(&targets);
                    }
                }
                while c.poll_closed().is_some() {
                    closed += 1;
                }
                c.check();
            }
            now += Duration::from_secs(61);
            c.handle_timeout(now);
            while c.poll_closed().is_some() {
                closed += 1;
            }
            prop_assert_eq!(c.flows(), 0);
            prop_assert_eq!(opened, closed, "every opened flow was closed once");
            prop_assert!(c.deadlines.is_empty(), "no timer left");
            prop_assert_eq!(c.per_source.total(), 0);
        }
    }
}
