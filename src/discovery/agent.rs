//! HAProxy's agent-check protocol, parsed: a sidecar next to a shard answers one line of
//! words separated by spaces, commas or tabs. `ready`/`up` make the shard ready, `drain` drains
//! it, `maint`/`down`/`stopped`/`fail` take it down, `N%` scales its weight; anything else is
//! ignored (HAProxy ignores it too). Pure.

use crate::routing::AgentState;

/// What one agent reply says; `None` fields leave that part unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AgentReply {
    pub state: Option<AgentState>,
    pub percent: Option<u32>,
}

pub fn parse_agent(line: &str) -> AgentReply {
    let mut reply = AgentReply::default();
    for word in line
        .split([' ', ',', '\t', '\r', '\n'])
        .filter(|w| !w.is_empty())
    {
        let w = word.to_ascii_lowercase();
        match w.as_str() {
            "ready" | "up" => reply.state = Some(AgentState::Ready),
            "drain" => reply.state = Some(AgentState::Drain),
            "maint" | "down" | "stopped" | "fail" => reply.state = Some(AgentState::Down),
            _ => {
                if let Some(n) = w.strip_suffix('%').and_then(|n| n.parse::<u32>().ok()) {
                    reply.percent = Some(n.min(256));
                }
            }
        }
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haproxy_agent_words() {
        assert_eq!(parse_agent("ready\n").state, Some(AgentState::Ready));
        assert_eq!(parse_agent("drain").state, Some(AgentState::Drain));
        assert_eq!(parse_agent("MAINT\r\n").state, Some(AgentState::Down));
        assert_eq!(
            parse_agent("up 75%"),
            AgentReply {
                state: Some(AgentState::Ready),
                percent: Some(75)
            }
        );
        assert_eq!(parse_agent("50%,drain").percent, Some(50));
        assert_eq!(parse_agent("garbage 1000%").percent, Some(256));
        assert_eq!(parse_agent(""), AgentReply::default());
        assert_eq!(parse_agent("%% x%").percent, None);
    }
}
