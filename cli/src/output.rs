//! How seaportctl prints services and events: a table for people, JSON for
//! programs. Tests pin these formats; change them only on purpose.

use std::time::SystemTime;

use seaport::Metadata;
use seaport_client::{Event, EventKind, Service};
use serde_json::{Value, json};

/// Output format chosen with `--output`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    /// Aligned columns for people.
    Table,
    /// JSON for programs.
    Json,
}

pub(crate) fn metadata_text(metadata: &Metadata) -> String {
    metadata
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// The full record as JSON.
pub(crate) fn service_json(s: &Service) -> Value {
    json!({
        "id": s.id,
        "name": s.name,
        "version": s.version.as_ref().map(ToString::to_string).unwrap_or_default(),
        "host": &*s.host,
        "port": s.port,
        "address": s.address(),
        "metadata": s.metadata.iter().map(|(k, v)| (k.clone(), Value::from(v.as_str()))).collect::<serde_json::Map<_, _>>(),
        "namespace": &*s.namespace,
        "owner": &*s.owner,
        "create_revision": s.create_revision,
        "mod_revision": s.mod_revision,
        "draining": s.draining,
    })
}

/// Rows as aligned columns under a header.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        padded.join("  ").trim_end().to_string()
    };
    let mut out = vec![line(header.to_vec())];
    out.extend(
        rows.iter()
            .map(|r| line(r.iter().map(String::as_str).collect())),
    );
    out.join("\n")
}

/// `query` and `get` output.
pub(crate) fn services(list: &[Service], format: Format, addresses: bool) -> String {
    match (format, addresses) {
        (Format::Table, true) => list
            .iter()
            .map(Service::address)
            .collect::<Vec<_>>()
            .join("\n"),
        (Format::Json, true) => {
            Value::from(list.iter().map(Service::address).collect::<Vec<_>>()).to_string()
        }
        (Format::Json, false) => {
            Value::from(list.iter().map(service_json).collect::<Vec<_>>()).to_string()
        }
        (Format::Table, false) => {
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|s| {
                    vec![
                        s.name.clone(),
                        s.version
                            .as_ref()
                            .map(ToString::to_string)
                            .unwrap_or_else(|| "-".into()),
                        s.address(),
                        s.id.clone(),
                        state(s).into(),
                        metadata_text(&s.metadata),
                    ]
                })
                .collect();
            table(
                &["NAME", "VERSION", "ADDRESS", "ID", "STATE", "METADATA"],
                &rows,
            )
        }
    }
}

/// `show` output: every service, grouped by name and then version.
pub(crate) fn grouped(list: &[Service]) -> String {
    let mut out = Vec::new();
    let mut last: (Option<&str>, Option<String>) = (None, None);
    for s in list {
        let version = s
            .version
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_else(|| "(no version)".into());
        if last.0 != Some(s.name.as_str()) {
            out.push(s.name.clone());
            last = (Some(&s.name), None);
        }
        if last.1.as_deref() != Some(version.as_str()) {
            out.push(format!("  {version}"));
            last.1 = Some(version);
        }
        let meta = metadata_text(&s.metadata);
        out.push(format!(
            "    {}  {}{}{}",
            s.address(),
            s.id,
            if s.draining { "  draining" } else { "" },
            if meta.is_empty() {
                String::new()
            } else {
                format!("  {meta}")
            }
        ));
    }
    out.join("\n")
}

/// `draining` for an instance that takes no new traffic, else `up`.
fn state(s: &Service) -> &'static str {
    if s.draining { "draining" } else { "up" }
}

fn event_word(kind: EventKind) -> &'static str {
    match kind {
        EventKind::Existing => "existing",
        EventKind::Synced => "synced",
        EventKind::Registered => "registered",
        EventKind::Updated => "updated",
        EventKind::Freed => "freed",
        EventKind::Reset => "reset",
    }
}

/// One `watch` line: time, event, role, address, id (and metadata when
/// verbose), or one JSON object.
pub(crate) fn event_line(event: &Event, format: Format, verbose: bool, now: SystemTime) -> String {
    let time = rfc3339(now);
    let word = event_word(event.kind);
    match format {
        Format::Json => json!({
            "time": time,
            "event": word,
            "revision": event.revision,
            "service": event.service.as_ref().map(service_json),
        })
        .to_string(),
        Format::Table => match &event.service {
            Some(s) => {
                let mut line = format!("{time} {word} {} {} {}", s.role(), s.address(), s.id);
                if s.draining {
                    line.push_str(" draining");
                }
                if verbose {
                    line.push(' ');
                    line.push_str(&metadata_text(&s.metadata));
                }
                line
            }
            None => format!("{time} {word} revision={}", event.revision),
        },
    }
}

/// UTC time as `2026-11-24T12:00:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn web() -> Service {
        Service {
            id: "abc".into(),
            name: "web".into(),
            version: Some("1.2.3".parse().unwrap()),
            host: "127.0.0.1".into(),
            port: 10001,
            metadata: [("zone".to_string(), "a".to_string())].into(),
            namespace: "default".into(),
            owner: "".into(),
            session_id: "s".into(),
            create_revision: 1,
            mod_revision: 1,
            draining: false,
        }
    }

    #[test]
    fn rfc3339_matches_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(1_795_000_000)),
            "2026-11-18T11:06:40Z"
        );
        assert_eq!(
            rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn query_formats_are_stable() {
        let list = [web()];
        assert_eq!(
            services(&list, Format::Table, false),
            "NAME  VERSION  ADDRESS          ID   STATE  METADATA\nweb   1.2.3    127.0.0.1:10001  abc  up     zone=a"
        );
        assert_eq!(services(&list, Format::Table, true), "127.0.0.1:10001");
        assert_eq!(
            services(&list, Format::Json, true),
            r#"["127.0.0.1:10001"]"#
        );
        let json: Value = serde_json::from_str(&services(&list, Format::Json, false)).unwrap();
        assert_eq!(json[0]["port"], 10001);
        assert_eq!(json[0]["metadata"]["zone"], "a");
    }

    #[test]
    fn watch_lines_are_stable() {
        let event = Event {
            kind: EventKind::Registered,
            service: Some(web()),
            revision: 7,
            reason: None,
        };
        let t = UNIX_EPOCH;
        assert_eq!(
            event_line(&event, Format::Table, false, t),
            "1970-01-01T00:00:00Z registered web@1.2.3 127.0.0.1:10001 abc"
        );
        assert_eq!(
            event_line(&event, Format::Table, true, t),
            "1970-01-01T00:00:00Z registered web@1.2.3 127.0.0.1:10001 abc zone=a"
        );
        let json: Value =
            serde_json::from_str(&event_line(&event, Format::Json, false, t)).unwrap();
        assert_eq!(
            (json["event"].as_str(), json["revision"].as_u64()),
            (Some("registered"), Some(7))
        );
    }

    #[test]
    fn show_groups_by_name_and_version() {
        let mut other = web();
        other.id = "def".into();
        other.port = 10002;
        other.draining = true;
        assert_eq!(
            grouped(&[web(), other]),
            "web\n  1.2.3\n    127.0.0.1:10001  abc  zone=a\n    127.0.0.1:10002  def  draining  zone=a"
        );
    }
}
