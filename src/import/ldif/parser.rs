//! A small reader for LDIF content records (RFC 2849): `dn:` lines,
//! `attr: value`, `attr:: base64`, line folding (a line starting with one
//! space continues the previous one), `#` comments (folded or not), blank
//! lines between records and a leading `version: 1`. Attribute names are
//! case-insensitive and options such as `;binary` are dropped. Records with
//! `changetype: add` are read as entries; other change records, URL values
//! (`attr:< file://…`) and malformed records become [`Body::Skip`] with a
//! reason, so one bad record never spoils the rest of the file.
//!
//! Error texts name line numbers and attribute names but never echo values:
//! a malformed line may well be a password.

use std::collections::BTreeMap;

use base64::Engine;
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

/// Longest logical (unfolded) line accepted.
pub(crate) const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Largest record accepted (sum of its physical lines).
pub(crate) const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Standard base64, with or without padding.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// One record of the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    /// 1-based line number where the record starts.
    pub(crate) line: usize,
    /// The DN (decoded when given as base64), if it could be read.
    pub(crate) dn: Option<String>,
    pub(crate) body: Body,
}

/// What a record holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Body {
    /// An entry (or a `changetype: add` record) with its attributes.
    Entry(Entry),
    /// A record that cannot be imported, and why.
    Skip(String),
}

/// The attributes of one entry: lower-cased names without options, each with
/// its values in file order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Entry {
    attrs: BTreeMap<String, Vec<Vec<u8>>>,
}

impl Entry {
    /// The raw values of `attr` (matched case-insensitively).
    pub(crate) fn values(&self, attr: &str) -> &[Vec<u8>] {
        self.attrs.get(&attr.to_ascii_lowercase()).map_or(&[], Vec::as_slice)
    }

    /// The values of `attr` as text.
    ///
    /// # Errors
    /// A value that is not UTF-8.
    pub(crate) fn texts(&self, attr: &str) -> Result<Vec<&str>, String> {
        self.values(attr)
            .iter()
            .map(|v| std::str::from_utf8(v).map_err(|_| format!("attribute {attr} is not valid UTF-8")))
            .collect()
    }

    /// The first value of `attr` as text, if any.
    ///
    /// # Errors
    /// The value is not UTF-8.
    pub(crate) fn first_text(&self, attr: &str) -> Result<Option<&str>, String> {
        match self.values(attr).first() {
            None => Ok(None),
            Some(v) => std::str::from_utf8(v).map(Some).map_err(|_| format!("attribute {attr} is not valid UTF-8")),
        }
    }

    /// The object classes, lower-cased.
    pub(crate) fn object_classes(&self) -> Vec<String> {
        self.values("objectclass").iter().map(|v| String::from_utf8_lossy(v).trim().to_ascii_lowercase()).collect()
    }

    /// Whether the entry has `class` (case-insensitive).
    pub(crate) fn has_object_class(&self, class: &str) -> bool {
        self.values("objectclass").iter().any(|v| v.trim_ascii().eq_ignore_ascii_case(class.as_bytes()))
    }

    fn push(&mut self, attr: String, value: Vec<u8>) {
        self.attrs.entry(attr).or_default().push(value);
    }
}

/// The physical lines of one record, unfolded, before interpretation.
struct RawRecord {
    start: usize,
    /// Logical lines (unfolded) with the line number each starts on.
    lines: Vec<(usize, Vec<u8>)>,
    size: usize,
    /// The first size or folding problem; further lines are not kept.
    error: Option<String>,
}

impl RawRecord {
    fn new(start: usize) -> Self {
        Self { start, lines: Vec::new(), size: 0, error: None }
    }

    fn push(&mut self, line_no: usize, line: &[u8]) {
        if self.error.is_some() {
            return;
        }
        self.size += line.len();
        if self.size > MAX_RECORD_BYTES {
            self.error = Some(format!(
                "line {line_no}: entry is larger than {} MiB; not imported",
                MAX_RECORD_BYTES / (1024 * 1024)
            ));
            return;
        }
        if let Some(rest) = line.strip_prefix(b" ") {
            match self.lines.last_mut() {
                Some((_, logical)) if logical.len() + rest.len() <= MAX_LINE_BYTES => {
                    logical.extend_from_slice(rest);
                }
                Some(_) => self.error = Some(too_long(line_no)),
                None => {
                    self.error = Some(format!(
                        "line {line_no}: continuation line (starting with a space) without a line before it"
                    ));
                }
            }
        } else if line.len() > MAX_LINE_BYTES {
            self.error = Some(too_long(line_no));
        } else {
            self.lines.push((line_no, line.to_vec()));
        }
    }
}

fn too_long(line_no: usize) -> String {
    format!(
        "line {line_no}: line (after unfolding) is longer than {} MiB; not imported",
        MAX_LINE_BYTES / (1024 * 1024)
    )
}

/// Splits `input` into records. Never fails as a whole: problems are
/// confined to the record they occur in.
pub(crate) fn parse(input: &[u8]) -> Vec<Record> {
    let input = input.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(input);
    let mut records = Vec::new();
    let mut seen_content = false;
    let mut current: Option<RawRecord> = None;
    for (idx, raw) in input.split(|&b| b == b'\n').enumerate() {
        let line_no = idx + 1;
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        // RFC 2849 separates records by empty lines; lines of only blanks
        // are treated the same (a fold cannot meaningfully add only blanks).
        if line.iter().all(|b| matches!(b, b' ' | b'\t')) {
            if let Some(rec) = current.take() {
                finish(rec, &mut seen_content, &mut records);
            }
            continue;
        }
        current.get_or_insert_with(|| RawRecord::new(line_no)).push(line_no, line);
    }
    if let Some(rec) = current.take() {
        finish(rec, &mut seen_content, &mut records);
    }
    records
}

/// Interprets one raw record and appends it to `out` unless it is only
/// comments, the version line, or an `ldapsearch` result trailer.
fn finish(raw: RawRecord, seen_content: &mut bool, out: &mut Vec<Record>) {
    let mut lines: Vec<(usize, &[u8])> =
        raw.lines.iter().filter(|(_, l)| !l.starts_with(b"#")).map(|(n, l)| (*n, l.as_slice())).collect();
    if !*seen_content && !lines.is_empty() {
        *seen_content = true;
        if lines.first().is_some_and(|(_, l)| attr_name(l).as_deref() == Some("version")) {
            lines.remove(0);
        }
    }
    let Some(&(first_no, first)) = lines.first() else {
        if let Some(error) = raw.error {
            out.push(Record { line: raw.start, dn: None, body: Body::Skip(error) });
        }
        return;
    };
    let dn = match parse_line(first_no, first) {
        Ok((name, value)) if name == "dn" => match String::from_utf8(value) {
            Ok(dn) => dn,
            Err(_) => return out.push(skip(raw.start, None, format!("line {first_no}: the DN is not valid UTF-8"))),
        },
        Ok((name, _)) if raw.error.is_none() && matches!(name.as_str(), "search" | "result") => return,
        Ok(_) | Err(_) => {
            let reason = raw.error.unwrap_or_else(|| format!("line {first_no}: record does not start with a dn: line"));
            return out.push(skip(raw.start, None, reason));
        }
    };
    if let Some(error) = raw.error {
        return out.push(skip(raw.start, Some(dn), error));
    }
    let body = match entry_body(&lines[1..]) {
        Ok(body) => body,
        Err(reason) => Body::Skip(reason),
    };
    out.push(Record { line: raw.start, dn: Some(dn), body });
}

fn skip(line: usize, dn: Option<String>, reason: String) -> Record {
    Record { line, dn, body: Body::Skip(reason) }
}

/// Reads the lines after `dn:`.
fn entry_body(lines: &[(usize, &[u8])]) -> Result<Body, String> {
    let mut entry = Entry::default();
    let mut started = false;
    for &(n, line) in lines {
        let (name, value) = parse_line(n, line)?;
        match name.as_str() {
            "control" if !started => continue,
            "changetype" if !started => {
                let kind = String::from_utf8_lossy(&value).trim().to_ascii_lowercase();
                if kind == "add" {
                    started = true;
                    continue;
                }
                let shown: String = kind.chars().filter(char::is_ascii_alphanumeric).take(20).collect();
                return Ok(Body::Skip(format!(
                    "changetype: {shown} records are not imported (only entries and changetype: add)"
                )));
            }
            "dn" => {
                return Err(format!("line {n}: a second dn: line in one entry (missing blank line between entries?)"));
            }
            _ => {}
        }
        started = true;
        entry.push(name, value);
    }
    Ok(Body::Entry(entry))
}

/// The lower-cased attribute name of a line, without options, if it has one.
fn attr_name(line: &[u8]) -> Option<String> {
    let colon = line.iter().position(|&b| b == b':')?;
    let name = &line[..colon];
    let base = name.split(|&b| b == b';').next().unwrap_or(name);
    let valid =
        !base.is_empty() && name.iter().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b';' | b'_'));
    valid.then(|| String::from_utf8_lossy(base).to_ascii_lowercase())
}

/// Splits `attr[;options]: value`, `attr:: base64` into the lower-cased
/// name (options dropped) and the value bytes.
fn parse_line(n: usize, line: &[u8]) -> Result<(String, Vec<u8>), String> {
    let Some(name) = attr_name(line) else {
        return Err(format!("line {n}: not an 'attribute: value' line"));
    };
    let colon = line.iter().position(|&b| b == b':').unwrap_or(line.len());
    let rest = line.get(colon + 1..).unwrap_or_default();
    match rest.first() {
        Some(b':') => {
            let encoded: Vec<u8> = rest[1..].iter().copied().filter(|b| !b.is_ascii_whitespace()).collect();
            let value =
                BASE64.decode(&encoded).map_err(|_| format!("line {n}: attribute {name} has invalid base64"))?;
            Ok((name, value))
        }
        Some(b'<') => Err(format!(
            "line {n}: attribute {name} refers to a URL (attr:< …); such values are not supported, inline them"
        )),
        _ => Ok((name, rest.trim_ascii().to_vec())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(input: &str) -> Vec<(String, Entry)> {
        parse(input.as_bytes())
            .into_iter()
            .map(|r| match r.body {
                Body::Entry(e) => (r.dn.unwrap_or_default(), e),
                Body::Skip(why) => panic!("unexpected skip at line {}: {why}", r.line),
            })
            .collect()
    }

    fn text(e: &Entry, attr: &str) -> Vec<String> {
        e.texts(attr).unwrap().into_iter().map(str::to_string).collect()
    }

    #[test]
    fn basic_records_comments_and_version() {
        let input = "# header comment\n\
                     # folded comment that\n  continues here\n\
                     version: 1\n\
                     \n\
                     dn: dc=example,dc=org\n\
                     objectClass: top\n\
                     objectClass: dcObject\n\
                     dc: example\n\
                     \n\
                     \n\
                     # comment between records\n\
                     dn: uid=alice,ou=people,dc=example,dc=org\n\
                     # comment inside a record\n\
                     UID: alice\n\
                     cn;lang-en: Alice Example  \n\
                     \n";
        let got = entries(input);
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].0, "dc=example,dc=org");
        assert!(got[0].1.has_object_class("DCOBJECT"));
        assert_eq!(got[0].1.object_classes(), ["top", "dcobject"]);
        assert_eq!(got[1].0, "uid=alice,ou=people,dc=example,dc=org");
        assert_eq!(text(&got[1].1, "uid"), ["alice"]);
        assert_eq!(text(&got[1].1, "CN"), ["Alice Example"]);
        assert!(got[1].1.values("version").is_empty());
    }

    #[test]
    fn version_directly_followed_by_a_record_and_crlf() {
        let got = entries("version: 1\r\ndn: cn=x,dc=y\r\ncn: x\r\n");
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "cn=x,dc=y");
        assert_eq!(text(&got[0].1, "cn"), ["x"]);
    }

    #[test]
    fn folding_joins_lines_exactly() {
        let input = "dn: uid=bob,ou=peo\n ple,dc=example,dc=org\n\
                     description: one two\n  three\n\
                     sshPublicKey: ssh-ed25519 AAAA\n BBBB bob@host\n";
        let got = entries(input);
        assert_eq!(got[0].0, "uid=bob,ou=people,dc=example,dc=org");
        assert_eq!(text(&got[0].1, "description"), ["one two three"]);
        assert_eq!(text(&got[0].1, "sshpublickey"), ["ssh-ed25519 AAAABBBB bob@host"]);
    }

    #[test]
    fn base64_values_and_dn_and_folded_base64() {
        // "{SSHA}abc+/=" and a DN with non-ASCII.
        let pw = BASE64.encode("{SSHA}abc+/=");
        let dn = BASE64.encode("uid=jörg,ou=people,dc=example,dc=org");
        let (a, b) = pw.split_at(5);
        let input =
            format!("dn:: {dn}\nuserPassword:: {a}\n {b}\njpegPhoto;binary:: AAEC\ncn:: {}\n", BASE64.encode("Jörg"));
        let got = entries(&input);
        assert_eq!(got[0].0, "uid=jörg,ou=people,dc=example,dc=org");
        assert_eq!(got[0].1.values("userpassword"), [b"{SSHA}abc+/=".to_vec()]);
        assert_eq!(got[0].1.values("jpegphoto"), [vec![0u8, 1, 2]]);
        assert_eq!(text(&got[0].1, "cn"), ["Jörg"]);
        // Unpadded base64 is accepted too.
        let got = entries("dn: cn=x\ncn:: eA\n");
        assert_eq!(text(&got[0].1, "cn"), ["x"]);
    }

    #[test]
    fn non_utf8_values_are_reported_when_read() {
        let mut input = b"dn: cn=x\ncn: ".to_vec();
        input.extend_from_slice(&[0xff, 0xfe]);
        input.push(b'\n');
        let records = parse(&input);
        let Body::Entry(e) = &records[0].body else { panic!("not an entry") };
        assert!(e.texts("cn").unwrap_err().contains("UTF-8"));
        assert!(e.first_text("cn").is_err());
        assert_eq!(e.first_text("sn").unwrap(), None);
    }

    #[test]
    fn changetypes() {
        let input = "dn: cn=a,dc=x\nchangetype: add\ncn: a\n\n\
                     dn: cn=b,dc=x\nchangetype: modify\nreplace: cn\ncn: b\n-\n\n\
                     dn: cn=c,dc=x\nchangetype: delete\n\n\
                     dn: cn=d,dc=x\ncontrol: 1.2.3 true\nchangetype: add\ncn: d\n";
        let records = parse(input.as_bytes());
        assert_eq!(records.len(), 4);
        let Body::Entry(a) = &records[0].body else { panic!("add is an entry") };
        assert!(a.values("changetype").is_empty());
        assert_eq!(a.values("cn"), [b"a".to_vec()]);
        assert!(matches!(&records[1].body, Body::Skip(why) if why.contains("changetype: modify")));
        assert!(matches!(&records[2].body, Body::Skip(why) if why.contains("changetype: delete")));
        assert_eq!(records[2].dn.as_deref(), Some("cn=c,dc=x"));
        assert!(matches!(&records[3].body, Body::Entry(_)));
    }

    #[test]
    fn bad_records_are_confined() {
        let input = "dn: cn=ok1\ncn: ok1\n\n\
                     cn: no dn here\n\n\
                     dn: cn=url\njpegPhoto:< file:///etc/shadow\n\n\
                     dn: cn=bad64\nuserPassword:: !!!notbase64\n\n\
                     dn: cn=twodn\ncn: a\ndn: cn=other\n\n\
                     dn: cn=noattr\nthis line has no colon secret\n\n\
                     \x20continuation at start\n\n\
                     dn: cn=ok2\ncn: ok2\n";
        let records = parse(input.as_bytes());
        let reasons: Vec<String> = records
            .iter()
            .map(|r| match &r.body {
                Body::Entry(_) => "entry".to_string(),
                Body::Skip(why) => why.clone(),
            })
            .collect();
        assert_eq!(reasons[0], "entry");
        assert!(reasons[1].contains("does not start with a dn:"), "{}", reasons[1]);
        assert!(reasons[2].contains("URL"), "{}", reasons[2]);
        assert!(reasons[3].contains("invalid base64"), "{}", reasons[3]);
        assert!(reasons[4].contains("second dn:"), "{}", reasons[4]);
        assert!(reasons[5].contains("not an 'attribute: value' line"), "{}", reasons[5]);
        assert!(!reasons[5].contains("secret"), "values are never echoed");
        assert!(reasons[6].contains("continuation line"), "{}", reasons[6]);
        assert_eq!(reasons[7], "entry");
        assert_eq!(records[1].line, 4);
        assert_eq!(records.len(), 8);
    }

    #[test]
    fn blank_looking_lines_separate_and_bom_is_ignored() {
        let got = entries("\u{feff}dn: cn=a\ncn: a\n \t \ndn: cn=b\ncn: b");
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].0, "cn=b");
    }

    #[test]
    fn ldapsearch_trailer_is_ignored() {
        let got = entries(
            "# extended LDIF\nversion: 1\n\ndn: cn=a\ncn: a\n\n\
             # search result\nsearch: 2\nresult: 0 Success\n\n# numResponses: 2\n",
        );
        assert_eq!(got.len(), 1);
    }

    #[test]
    fn oversized_lines_and_records_are_rejected_with_a_reason() {
        let long = "a".repeat(MAX_LINE_BYTES + 1);
        let input = format!("dn: cn=big\ndescription: {long}\n\ndn: cn=ok\ncn: ok\n");
        let records = parse(input.as_bytes());
        assert_eq!(records.len(), 2);
        assert_eq!(records[0].dn.as_deref(), Some("cn=big"));
        assert!(matches!(&records[0].body, Body::Skip(why) if why.contains("longer than 1 MiB")));
        assert!(matches!(records[1].body, Body::Entry(_)));

        let folded = format!("dn: cn=big\ndescription: x\n{}\n", format!(" {}\n", "b".repeat(1000)).repeat(1100));
        let records = parse(folded.as_bytes());
        assert!(matches!(&records[0].body, Body::Skip(why) if why.contains("longer than 1 MiB")));

        let many = format!("dn: cn=huge\n{}", format!("memberUid: {}\n", "u".repeat(1000)).repeat(17 * 1024));
        let records = parse(many.as_bytes());
        assert_eq!(records.len(), 1);
        assert!(matches!(&records[0].body, Body::Skip(why) if why.contains("larger than 16 MiB")));
    }
}
