//! Parser for services(5) files (`/etc/services`).
//!
//! Format: `NAME PORT/PROTOCOL [ALIAS...]`, `#` starts a comment.
//!
//! Choices (stable): malformed lines are skipped; names and aliases match
//! ASCII case-insensitively; the protocol must match exactly (`tcp`); the
//! first matching line wins.

/// One parsed services line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceEntry {
    /// Official service name.
    pub name: String,
    /// Port number.
    pub port: u16,
    /// Protocol (`tcp`, `udp`, `sctp`, …).
    pub protocol: String,
    /// Aliases.
    pub aliases: Vec<String>,
}

/// Parse the text of a services file.
pub fn parse_services(text: &str) -> Vec<ServiceEntry> {
    let mut out = Vec::new();
    for raw in text.lines() {
        let line = match raw.split_once('#') {
            Some((before, _)) => before,
            None => raw,
        };
        let mut fields = line.split_ascii_whitespace();
        let (Some(name), Some(port_proto)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((port, protocol)) = port_proto.split_once('/') else {
            continue;
        };
        let Ok(port) = port.parse::<u16>() else {
            continue;
        };
        if protocol.is_empty() {
            continue;
        }
        out.push(ServiceEntry {
            name: name.to_string(),
            port,
            protocol: protocol.to_string(),
            aliases: fields.map(str::to_string).collect(),
        });
    }
    out
}

/// Port of service `name` for `protocol`, by name or alias.
pub fn lookup_service(entries: &[ServiceEntry], name: &str, protocol: &str) -> Option<u16> {
    entries
        .iter()
        .find(|e| {
            e.protocol == protocol
                && (e.name.eq_ignore_ascii_case(name)
                    || e.aliases.iter().any(|a| a.eq_ignore_ascii_case(name)))
        })
        .map(|e| e.port)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
# Network services, Internet style
tcpmux\t\t1/tcp\t\t\t\t# TCP port service multiplexer
ssh\t\t22/tcp\t\t\t\t# SSH Remote Login Protocol
domain\t\t53/tcp\t\t\t\t# Domain Name Server
domain\t\t53/udp
http\t\t80/tcp\t\twww\t\t# WorldWideWeb HTTP
syslog\t\t514/udp
broken 99999/tcp
noproto 12/
noslash 13
lonely
mh-resume 4433/tcp namesock resume-alt
";

    #[test]
    fn lookups_by_name_alias_and_protocol() {
        let e = parse_services(SAMPLE);
        assert_eq!(lookup_service(&e, "ssh", "tcp"), Some(22));
        assert_eq!(lookup_service(&e, "www", "tcp"), Some(80));
        assert_eq!(lookup_service(&e, "HTTP", "tcp"), Some(80));
        assert_eq!(lookup_service(&e, "domain", "udp"), Some(53));
        assert_eq!(lookup_service(&e, "syslog", "tcp"), None);
        assert_eq!(lookup_service(&e, "resume-alt", "tcp"), Some(4433));
        assert_eq!(lookup_service(&e, "broken", "tcp"), None);
        assert_eq!(lookup_service(&e, "noproto", "tcp"), None);
        assert_eq!(lookup_service(&e, "nothing", "tcp"), None);
    }

    #[test]
    fn malformed_lines_skipped() {
        let e = parse_services(SAMPLE);
        assert_eq!(e.len(), 7);
        assert_eq!(e[4].aliases, vec!["www"]);
    }

    mod props {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #[test]
            fn never_panics(s in "\\PC*", name in "[a-z]{1,8}") {
                let e = parse_services(&s);
                let _ = lookup_service(&e, &name, "tcp");
            }
        }
    }
}
