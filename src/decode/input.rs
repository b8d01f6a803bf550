//! `[input]`: which log format the input is in, and how a gateway's record
//! maps onto an access event.
//!
//! `v1` is replayguard's own format ([`super::v1`]). Every other format is
//! a *mapping*: for each access-event field, the paths into the record
//! where the gateway writes it (the first present one wins), read in one
//! pass by [`super::json`] and converted leniently ([`super::mapped`]):
//! numeric strings count as numbers, [`InputConfig::absent_values`] as
//! "not sent", timestamps as [`TimeFormat`] says. The presets are the
//! mappings of what each gateway writes with the configuration the README
//! gives ("Your gateway's logs").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::json::Paths;
use super::v1::{self, NAMES};

/// The input format (`[input] format`, `--input-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Access event v1 (schemas/access-event.v1.schema.json), strictly.
    #[default]
    V1,
    /// Kong's log serializer (file-log, http-log, tcp-log, kafka-log).
    Kong,
    /// Envoy's `json_format` access log as the README configures it.
    Envoy,
    /// NGINX `log_format … escape=json` as the README configures it.
    Nginx,
    /// AWS API Gateway access logging with the README's `$context` format.
    AwsApigw,
    /// Traefik's JSON access log with the needed headers kept.
    Traefik,
    /// Only `[input.map]` (fields not mapped are read at their v1 names).
    Mapped,
}

impl Format {
    pub const ALL: [Format; 7] = [
        Format::V1,
        Format::Kong,
        Format::Envoy,
        Format::Nginx,
        Format::AwsApigw,
        Format::Traefik,
        Format::Mapped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::V1 => "v1",
            Format::Kong => "kong",
            Format::Envoy => "envoy",
            Format::Nginx => "nginx",
            Format::AwsApigw => "aws-apigw",
            Format::Traefik => "traefik",
            Format::Mapped => "mapped",
        }
    }

    /// A format by its name, as `--input-format` takes it.
    pub fn parse(s: &str) -> Result<Format, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown input format {s:?} (one of {})",
                    Format::ALL.map(|f| f.as_str()).join(", ")
                )
            })
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a timestamp field is written (`[input.time]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// RFC 3339 with any offset; or a number (or numeric string) of epoch
    /// seconds, milliseconds, microseconds or nanoseconds, chosen by its
    /// magnitude (below 10^11: seconds, 10^14: ms, 10^17: µs, else ns),
    /// with an exact decimal fraction allowed.
    #[default]
    Auto,
    Rfc3339,
    EpochS,
    EpochMs,
    EpochUs,
    EpochNs,
    /// Common Log Format: `28/Nov/2026:09:15:02 +0000`.
    Clf,
}

/// `[input.time]`: the format of each timestamp field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeConfig {
    pub received_at: TimeFormat,
    pub client_ts: TimeFormat,
}

/// `[input]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    pub format: Format,
    /// Request headers carrying the key id, nonce, client time and
    /// signature (Kong and Traefik log headers by name; NGINX as
    /// `http_<name>`). Compared without regard to case.
    pub key_header: String,
    pub nonce_header: String,
    pub timestamp_header: String,
    pub signature_header: String,
    /// Values meaning "not sent" in any field; unset: `["", "-"]` for every
    /// format but v1, which has none (its schema says what is absent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absent_values: Option<Vec<String>>,
    /// Per access-event field, a dotted path into the record (overrides
    /// the preset's). A segment in double quotes may hold dots.
    pub map: BTreeMap<String, String>,
    pub time: TimeConfig,
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            format: Format::V1,
            key_header: "x-api-key".into(),
            nonce_header: "x-nonce".into(),
            timestamp_header: "x-timestamp".into(),
            signature_header: "x-signature".into(),
            absent_values: None,
            map: BTreeMap::new(),
            time: TimeConfig::default(),
        }
    }
}

/// One way to a field: a path, each segment with whether its object
/// compares keys without regard to ASCII case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath {
    pub segments: Vec<String>,
    pub case_insensitive: Vec<bool>,
}

impl FieldPath {
    fn exact(path: &[&str]) -> Self {
        FieldPath {
            segments: path.iter().map(|s| s.to_string()).collect(),
            case_insensitive: vec![false; path.len()],
        }
    }

    /// A header under `object` (a path), its key `prefix` and `name`,
    /// looked up without regard to case.
    fn header(object: &[&str], prefix: &str, name: &str) -> Self {
        let mut p = Self::exact(object);
        p.segments.push(format!("{prefix}{name}"));
        p.case_insensitive.push(true);
        p
    }

    /// As written in the config and in error messages.
    pub fn display(&self) -> String {
        self.segments
            .iter()
            .map(|s| {
                if s.contains('.') || s.contains('"') || s.is_empty() {
                    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
                } else {
                    s.clone()
                }
            })
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// Parses a dotted path: `a.b.c`, with `"a.b".c` for a key holding a dot
/// (`\"` and `\\` inside quotes).
pub fn parse_path(s: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars().peekable();
    let mut quoted_segment = false;
    loop {
        match chars.next() {
            None => {
                if cur.is_empty() && !quoted_segment {
                    return Err(format!("path {s:?} has an empty segment"));
                }
                out.push(std::mem::take(&mut cur));
                return Ok(out);
            }
            Some('.') => {
                if cur.is_empty() && !quoted_segment {
                    return Err(format!("path {s:?} has an empty segment"));
                }
                out.push(std::mem::take(&mut cur));
                quoted_segment = false;
            }
            Some('"') if cur.is_empty() && !quoted_segment => {
                loop {
                    match chars.next() {
                        None => return Err(format!("path {s:?} has an unclosed quote")),
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\')) => cur.push(c),
                            _ => return Err(format!("path {s:?}: only \\\" and \\\\ escape")),
                        },
                        Some(c) => cur.push(c),
                    }
                }
                quoted_segment = true;
                if !matches!(chars.peek(), None | Some('.')) {
                    return Err(format!("path {s:?}: a quoted segment ends at a dot"));
                }
            }
            Some(c) => {
                if quoted_segment {
                    return Err(format!("path {s:?}: a quoted segment ends at a dot"));
                }
                if c == '"' {
                    return Err(format!(
                        "path {s:?}: a quote may only open a segment (\"a.b\".c)"
                    ));
                }
                cur.push(c);
            }
        }
    }
}

/// What decoding a mapped format needs, resolved once from [`InputConfig`].
#[derive(Debug, Clone)]
pub struct Mapping {
    pub format: Format,
    pub paths: Paths,
    /// Per slot of `paths`: the access-event field (index into [`NAMES`]).
    pub slot_field: Vec<usize>,
    /// Per field: its candidate paths, in order of preference (slots).
    pub field_slots: [Vec<usize>; 12],
    /// Per field: its paths as written, for error messages.
    pub field_paths: [Vec<String>; 12],
    pub absent: Vec<String>,
    /// The length of the longest of `absent` (a longer value is sent).
    pub absent_max_len: usize,
    pub time: TimeConfig,
}

impl InputConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.format == Format::V1 {
            if !self.map.is_empty() {
                return Err(
                    "input.map needs a format other than v1 (use format = \"mapped\" \
                            or a gateway preset)"
                        .into(),
                );
            }
            if self.absent_values.is_some() {
                return Err(
                    "input.absent_values does not apply to v1, whose schema says \
                            what is absent"
                        .into(),
                );
            }
            if self.time != TimeConfig::default() {
                return Err(
                    "input.time does not apply to v1 (its timestamps are RFC 3339 \
                            or epoch milliseconds)"
                        .into(),
                );
            }
        }
        for (name, h) in [
            ("key_header", &self.key_header),
            ("nonce_header", &self.nonce_header),
            ("timestamp_header", &self.timestamp_header),
            ("signature_header", &self.signature_header),
        ] {
            if h.is_empty() {
                return Err(format!("input.{name} must not be empty"));
            }
        }
        self.mapping().map(|_| ())
    }

    /// Where the preset reads request headers, whose names it compares
    /// without regard to case: the object holding them and the prefix of
    /// their keys (Kong: `request.headers.<name>`; Traefik: `request_<Name>`
    /// at the top).
    fn header_container(&self) -> Option<(&'static [&'static str], &'static str)> {
        match self.format {
            Format::Kong => Some((&["request", "headers"], "")),
            Format::Traefik => Some((&[], "request_")),
            _ => None,
        }
    }

    /// The access-event fields' candidate paths for this format.
    fn preset(&self) -> [Vec<FieldPath>; 12] {
        let mut f: [Vec<FieldPath>; 12] = Default::default();
        let x = FieldPath::exact;
        // a header where this format logs them (Kong, Traefik)
        let hdr = |name: &str| {
            let (object, prefix) = self.header_container().expect("a format with headers");
            FieldPath::header(object, prefix, name)
        };
        match self.format {
            Format::V1 | Format::Mapped => {
                for (i, name) in NAMES.iter().enumerate() {
                    f[i] = vec![x(&[name])];
                }
            }
            Format::Kong => {
                // https://docs.konghq.com/gateway/latest/plugin-development/pdk/kong.log/#konglogserialize
                f[v1::EVENT_ID] = vec![x(&["request", "id"])];
                f[v1::RECEIVED_AT] = vec![x(&["started_at"])];
                f[v1::KEY_ID] = vec![hdr(&self.key_header)];
                f[v1::NONCE] = vec![hdr(&self.nonce_header)];
                f[v1::CLIENT_TS] = vec![hdr(&self.timestamp_header)];
                f[v1::CLIENT_IP] = vec![x(&["client_ip"])];
                f[v1::METHOD] = vec![x(&["request", "method"])];
                f[v1::PATH] = vec![x(&["request", "uri"])];
                f[v1::STATUS] = vec![x(&["response", "status"])];
                f[v1::USER_AGENT] = vec![hdr("user-agent")];
                f[v1::CLIENT_ID] = vec![x(&["consumer", "username"]), x(&["consumer", "id"])];
                f[v1::SIGNATURE] = vec![hdr(&self.signature_header)];
            }
            Format::Envoy => {
                for (i, name) in [
                    (v1::EVENT_ID, "request_id"),
                    (v1::RECEIVED_AT, "start_time"),
                    (v1::KEY_ID, "api_key"),
                    (v1::NONCE, "nonce"),
                    (v1::CLIENT_TS, "client_ts"),
                    (v1::CLIENT_IP, "client_ip"),
                    (v1::METHOD, "method"),
                    (v1::PATH, "path"),
                    (v1::STATUS, "response_code"),
                    (v1::USER_AGENT, "user_agent"),
                    (v1::CLIENT_ID, "client_id"),
                    (v1::SIGNATURE, "signature"),
                ] {
                    f[i] = vec![x(&[name])];
                }
            }
            Format::Nginx => {
                let var = |h: &str| format!("http_{}", h.to_ascii_lowercase().replace('-', "_"));
                for (i, name) in [
                    (v1::EVENT_ID, "request_id".to_string()),
                    (v1::RECEIVED_AT, "msec".into()),
                    (v1::KEY_ID, var(&self.key_header)),
                    (v1::NONCE, var(&self.nonce_header)),
                    (v1::CLIENT_TS, var(&self.timestamp_header)),
                    (v1::CLIENT_IP, "remote_addr".into()),
                    (v1::METHOD, "request_method".into()),
                    (v1::PATH, "request_uri".into()),
                    (v1::STATUS, "status".into()),
                    (v1::USER_AGENT, "http_user_agent".into()),
                    (v1::CLIENT_ID, "remote_user".into()),
                    (v1::SIGNATURE, var(&self.signature_header)),
                ] {
                    f[i] = vec![x(&[&name])];
                }
            }
            Format::AwsApigw => {
                for (i, name) in [
                    (v1::EVENT_ID, "requestId"),
                    (v1::RECEIVED_AT, "requestTimeEpoch"),
                    (v1::KEY_ID, "apiKeyId"),
                    (v1::NONCE, "nonce"),
                    (v1::CLIENT_TS, "clientTs"),
                    (v1::CLIENT_IP, "ip"),
                    (v1::METHOD, "httpMethod"),
                    (v1::PATH, "path"),
                    (v1::STATUS, "status"),
                    (v1::USER_AGENT, "userAgent"),
                    (v1::CLIENT_ID, "principalId"),
                    (v1::SIGNATURE, "signature"),
                ] {
                    f[i] = vec![x(&[name])];
                }
            }
            Format::Traefik => {
                // https://doc.traefik.io/traefik/observability/access-logs/
                f[v1::EVENT_ID] = vec![hdr("X-Request-Id")];
                f[v1::RECEIVED_AT] = vec![x(&["StartUTC"])];
                f[v1::KEY_ID] = vec![hdr(&self.key_header)];
                f[v1::NONCE] = vec![hdr(&self.nonce_header)];
                f[v1::CLIENT_TS] = vec![hdr(&self.timestamp_header)];
                f[v1::CLIENT_IP] = vec![x(&["ClientHost"])];
                f[v1::METHOD] = vec![x(&["RequestMethod"])];
                f[v1::PATH] = vec![x(&["RequestPath"])];
                f[v1::STATUS] = vec![x(&["DownstreamStatus"])];
                f[v1::USER_AGENT] = vec![hdr("User-Agent")];
                f[v1::CLIENT_ID] = vec![x(&["ClientUsername"])];
                f[v1::SIGNATURE] = vec![hdr(&self.signature_header)];
            }
        }
        f
    }

    /// The values meaning "not sent".
    pub fn absent(&self) -> Vec<String> {
        match (&self.absent_values, self.format) {
            (Some(v), _) => v.clone(),
            (None, Format::V1) => Vec::new(),
            (None, _) => vec![String::new(), "-".into()],
        }
    }

    /// Resolves the mapping (preset, then `[input.map]`), checking every
    /// path. `Ok(None)` for v1.
    pub fn mapping(&self) -> Result<Option<Mapping>, String> {
        if self.format == Format::V1 {
            return Ok(None);
        }
        let mut fields = self.preset();
        for (field, path) in &self.map {
            let Some(i) = v1::field_index(field) else {
                return Err(format!(
                    "input.map.{field}: not an access-event field (one of {})",
                    NAMES.join(", ")
                ));
            };
            let segments = parse_path(path).map_err(|e| format!("input.map.{field}: {e}"))?;
            let mut case_insensitive = vec![false; segments.len()];
            // a path to a header of the preset's headers compares the
            // header's name without regard to case, as the preset does
            if let (Some((parent, prefix)), Some((last, up))) =
                (self.header_container(), segments.split_last())
            {
                if up == parent
                    && last
                        .get(..prefix.len())
                        .is_some_and(|p| p.eq_ignore_ascii_case(prefix))
                {
                    *case_insensitive.last_mut().expect("a path has a segment") = true;
                }
            }
            fields[i] = vec![FieldPath {
                segments,
                case_insensitive,
            }];
        }
        let mut paths = Paths::new(fields.iter().map(Vec::len).sum());
        let mut slot_field = Vec::new();
        let mut field_slots: [Vec<usize>; 12] = Default::default();
        let mut field_paths: [Vec<String>; 12] = Default::default();
        for (i, candidates) in fields.iter().enumerate() {
            for p in candidates {
                let slot = slot_field.len();
                let segs: Vec<&str> = p.segments.iter().map(String::as_str).collect();
                if !paths.add(&segs, &p.case_insensitive, slot) {
                    return Err(format!(
                        "input: the path {} of `{}` conflicts with another field's path \
                         (one path cannot be both a value and an object, or two fields)",
                        p.display(),
                        NAMES[i]
                    ));
                }
                slot_field.push(i);
                field_slots[i].push(slot);
                field_paths[i].push(p.display());
            }
        }
        let absent = self.absent();
        Ok(Some(Mapping {
            format: self.format,
            paths,
            slot_field,
            field_slots,
            field_paths,
            absent_max_len: absent.iter().map(String::len).max().unwrap_or(0),
            absent,
            time: self.time,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_parse_with_quoted_segments() {
        assert_eq!(
            parse_path("req.hdr.X-Nonce").unwrap(),
            ["req", "hdr", "X-Nonce"]
        );
        assert_eq!(parse_path("\"a.b\".c").unwrap(), ["a.b", "c"]);
        assert_eq!(parse_path("x.\"q\\\"t\"").unwrap(), ["x", "q\"t"]);
        assert_eq!(parse_path("\"\"").unwrap(), [""]);
        for bad in ["", "a..b", ".a", "a.", "\"a", "\"a\"b", "a\"b\"", "\"\\n\""] {
            assert!(parse_path(bad).is_err(), "{bad}");
        }
        let p = FieldPath::exact(&["a.b", "c"]);
        assert_eq!(parse_path(&p.display()).unwrap(), p.segments);
    }

    #[test]
    fn every_preset_resolves_and_map_overrides() {
        for f in Format::ALL {
            let c = InputConfig {
                format: f,
                ..InputConfig::default()
            };
            c.validate().unwrap();
            assert_eq!(Format::parse(f.as_str()).unwrap(), f);
        }
        let mut c = InputConfig {
            format: Format::Kong,
            ..InputConfig::default()
        };
        c.map
            .insert("nonce".into(), "request.querystring.nonce".into());
        let m = c.mapping().unwrap().unwrap();
        assert_eq!(m.field_paths[v1::NONCE], ["request.querystring.nonce"]);
        assert_eq!(m.field_paths[v1::CLIENT_ID].len(), 2);
        c.map.insert("nonse".into(), "x".into());
        assert!(c.validate().unwrap_err().contains("nonse"));
    }

    #[test]
    fn a_map_entry_to_a_presets_header_compares_its_name_without_case() {
        use crate::decode::{DecodeConfig, Decoder};
        let decode = |format, field: &str, path: &str, line: &str| {
            let mut c = InputConfig {
                format,
                ..InputConfig::default()
            };
            c.map.insert(field.into(), path.into());
            let d = Decoder::new(&DecodeConfig::default(), &c).unwrap();
            let ev = d.access(line.as_bytes()).unwrap();
            (
                ev.nonce.map(|n| n.to_string()),
                ev.client_id.map(|n| n.to_string()),
            )
        };
        // Kong logs header names in lower case; the override names it as sent
        let kong = r#"{"request":{"id":"r1","method":"GET","uri":"/","headers":{"x-api-key":"k","x-client-nonce":"n7"}},"started_at":1795857302417,"client_ip":"10.0.0.1","response":{"status":200},"consumer":{"Name":"c"}}"#;
        let (nonce, _) = decode(
            Format::Kong,
            "nonce",
            "request.headers.X-Client-Nonce",
            kong,
        );
        assert_eq!(nonce.as_deref(), Some("n7"));
        // elsewhere, keys are compared as written
        let (_, client) = decode(Format::Kong, "client_id", "consumer.name", kong);
        assert_eq!(client, None);
        let (_, client) = decode(Format::Kong, "client_id", "consumer.Name", kong);
        assert_eq!(client.as_deref(), Some("c"));
        // Traefik keeps headers as request_<Name> at the top
        let traefik = r#"{"StartUTC":"2026-11-28T09:15:02.417Z","ClientHost":"10.0.0.1","RequestMethod":"GET","RequestPath":"/","DownstreamStatus":200,"request_X-Api-Key":"k","request_x-alt-nonce":"n8"}"#;
        let (nonce, _) = decode(Format::Traefik, "nonce", "request_X-Alt-Nonce", traefik);
        assert_eq!(nonce.as_deref(), Some("n8"));
        // mapped: every key as written
        let mapped = r#"{"event_id":"e","received_at":1795857302417,"client_ip":"10.0.0.1","method":"GET","path":"/","status":200,"h":{"x-nonce":"n9"}}"#;
        let (nonce, _) = decode(Format::Mapped, "nonce", "h.X-Nonce", mapped);
        assert_eq!(nonce, None);
        let (nonce, _) = decode(Format::Mapped, "nonce", "h.x-nonce", mapped);
        assert_eq!(nonce.as_deref(), Some("n9"));
    }

    #[test]
    fn contradictions_are_refused() {
        let mut c = InputConfig::default();
        c.map.insert("nonce".into(), "n".into());
        assert!(c.validate().unwrap_err().contains("v1"));
        let mut c = InputConfig {
            format: Format::Mapped,
            ..InputConfig::default()
        };
        // a value and an object at one key
        c.map.insert("nonce".into(), "a".into());
        c.map.insert("key_id".into(), "a.b".into());
        assert!(c.validate().unwrap_err().contains("conflicts"));
        // two fields at one path
        let mut c = InputConfig {
            format: Format::Mapped,
            ..InputConfig::default()
        };
        c.map.insert("nonce".into(), "x".into());
        c.map.insert("key_id".into(), "x".into());
        assert!(c.validate().unwrap_err().contains("conflicts"));
        assert!(Format::parse("kongg").unwrap_err().contains("kong"));
    }
}
