//! The rule table: which tool sent a packet, said in a small file rather than in code.
//!
//! portguard ships `packaging/portguard.fp`, compiled in (and installed for reference as
//! `/usr/share/doc/portguard/portguard.fp`); an admin adds files of the same format, read after
//! it (`run --rules FILE`, `[fingerprint] rules` in the config file). The format, in full:
//!
//! ```text
//! ; a comment (also '#'); blank lines are ignored; a line ending in '\' continues on the next
//! [masscan]                          ; a rule, named by its label (labels may repeat)
//! class       = scanner              ; scanner | worm | os | misc
//! specificity = 95                   ; 0..=100: the most specific matching rule wins (default 50)
//! match       = syn && options == "" && ip_id == (dst ^ dport ^ seq) & 0xffff
//! match       = ...                  ; more `match` lines are alternatives (any may match)
//! evidence    = IP ID {ip_id} == (dst ^ dport ^ seq) & 0xffff
//! ```
//!
//! A `match` is an expression over one packet's fields, and over the previous packet of the
//! same source as `prev.FIELD` (relations across packets: `sport == prev.sport + 1`). A
//! condition that refers to `prev` is false on a source's first packet.
//!
//! Fields (integers unless said): `version` `ttl` `tos` `ecn` `ip_id` `df` `mbz` `flow`
//! `ip_opt_len` `ip_len` `tcp` `udp` `sport` `dport` `dst` (the IPv4 destination as a 32-bit
//! number; absent over IPv6) `payload_len` `payload` (string: hex of the first 8 payload bytes)
//! `flags` `syn` (SYN set, ACK/RST/FIN clear) `ns` `seq` `ack` `window` `urg` `options`
//! (string: the option layout in p0f's notation, "mss,sok,ts,nop,ws", "" for none)
//! `opt_count` `opt_bad` `mss` `wscale` `ts` (timestamp option present) `ts_val` `ts_ecr`
//! (TSecr non-zero) `eol_pad` `tcp_opt_len`. `mss`, `wscale` and `ts_val` are absent when
//! their option is. Constants: `FIN SYN RST PSH ACK URG ECE CWR` (flag bits).
//!
//! Operators, tightest first, as in Rust: `!` (logical not); `* / %`; `+ -`; `<< >>`; `&`;
//! `^`; `|`; comparisons `== != < <= > >=`, `x in {1, 2, 3}`, `x in 37..=59`; `&&`; `||`.
//! Arithmetic is on 64-bit unsigned integers, wrapping. Functions: `bswap32(x)`,
//! `bswap16(x)`, `starts_with(s, prefix)`, `contains(s, part)`. A comparison involving an
//! absent value (`dst` over IPv6, `prev.*` on a first packet, `mss` without an MSS option, a
//! division by zero) is false, whatever the operator.
//!
//! `evidence` is a sentence with `{field}`, `{prev.field}`, `{field:x}` (hex) or `{field:ip}`
//! (an IPv4 address) placeholders.
//!
//! Every mistake in a file is a one-line error naming the file and line.

use std::{fmt, path::Path};

use super::features::{Features, Transport, tcp_flags};

/// What kind of sender a rule names.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Class {
    /// A scanning tool (nmap, masscan, zmap, hping3, ...).
    Scanner,
    /// Self-propagating malware (Mirai and its kin).
    Worm,
    /// An ordinary operating system's TCP/IP stack.
    Os,
    /// Anything else worth naming (a misconfigured host, a known service).
    Misc,
}

impl Class {
    pub fn as_str(self) -> &'static str {
        match self {
            Class::Scanner => "scanner",
            Class::Worm => "worm",
            Class::Os => "os",
            Class::Misc => "misc",
        }
    }

    fn parse(s: &str) -> Option<Class> {
        Some(match s {
            "scanner" => Class::Scanner,
            "worm" => Class::Worm,
            "os" => Class::Os,
            "misc" => Class::Misc,
            _ => return None,
        })
    }
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A mistake in a rule file: `FILE:LINE: what`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleError {
    pub file: String,
    pub line: usize,
    pub msg: String,
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.msg)
    }
}
impl std::error::Error for RuleError {}

// ---------------------------------------------------------------------------------------------
// Values and fields

#[derive(Clone, Debug, PartialEq, Eq)]
enum Value {
    Int(u64),
    Str(String),
    /// The field does not exist for this packet (see the module comment).
    Absent,
}

impl Value {
    fn truthy(&self) -> bool {
        match self {
            Value::Int(n) => *n != 0,
            Value::Str(s) => !s.is_empty(),
            Value::Absent => false,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ty {
    Int,
    Str,
}

/// Every field a rule can name: its name, type and how to read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Field {
    Version,
    Ttl,
    Tos,
    Ecn,
    IpId,
    Df,
    Mbz,
    Flow,
    IpOptLen,
    IpLen,
    Tcp,
    Udp,
    Sport,
    Dport,
    Dst,
    PayloadLen,
    Payload,
    Flags,
    Syn,
    Ns,
    Seq,
    Ack,
    Window,
    Urg,
    Options,
    OptCount,
    OptBad,
    Mss,
    Wscale,
    Ts,
    TsVal,
    TsEcr,
    EolPad,
    TcpOptLen,
}

const FIELDS: &[(&str, Field)] = &[
    ("version", Field::Version),
    ("ttl", Field::Ttl),
    ("tos", Field::Tos),
    ("ecn", Field::Ecn),
    ("ip_id", Field::IpId),
    ("df", Field::Df),
    ("mbz", Field::Mbz),
    ("flow", Field::Flow),
    ("ip_opt_len", Field::IpOptLen),
    ("ip_len", Field::IpLen),
    ("tcp", Field::Tcp),
    ("udp", Field::Udp),
    ("sport", Field::Sport),
    ("dport", Field::Dport),
    ("dst", Field::Dst),
    ("payload_len", Field::PayloadLen),
    ("payload", Field::Payload),
    ("flags", Field::Flags),
    ("syn", Field::Syn),
    ("ns", Field::Ns),
    ("seq", Field::Seq),
    ("ack", Field::Ack),
    ("window", Field::Window),
    ("urg", Field::Urg),
    ("options", Field::Options),
    ("opt_count", Field::OptCount),
    ("opt_bad", Field::OptBad),
    ("mss", Field::Mss),
    ("wscale", Field::Wscale),
    ("ts", Field::Ts),
    ("ts_val", Field::TsVal),
    ("ts_ecr", Field::TsEcr),
    ("eol_pad", Field::EolPad),
    ("tcp_opt_len", Field::TcpOptLen),
];

const CONSTANTS: &[(&str, u64)] = &[
    ("FIN", tcp_flags::FIN as u64),
    ("SYN", tcp_flags::SYN as u64),
    ("RST", tcp_flags::RST as u64),
    ("PSH", tcp_flags::PSH as u64),
    ("ACK", tcp_flags::ACK as u64),
    ("URG", tcp_flags::URG as u64),
    ("ECE", tcp_flags::ECE as u64),
    ("CWR", tcp_flags::CWR as u64),
];

impl Field {
    fn lookup(name: &str) -> Option<Field> {
        FIELDS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
    }

    fn ty(self) -> Ty {
        match self {
            Field::Options | Field::Payload => Ty::Str,
            _ => Ty::Int,
        }
    }

    fn read(self, f: &Features) -> Value {
        let tcp = f.transport == Transport::Tcp;
        let int = |v: u64| Value::Int(v);
        let o = &f.options;
        match self {
            Field::Version => int(f.version as u64),
            Field::Ttl => int(f.ttl as u64),
            Field::Tos => int(f.tos as u64),
            Field::Ecn => int((f.tos & 3) as u64),
            Field::IpId => int(f.ip_id as u64),
            Field::Df => int(f.df as u64),
            Field::Mbz => int(f.mbz as u64),
            Field::Flow => int(f.flow as u64),
            Field::IpOptLen => int(f.ip_opt_len as u64),
            Field::IpLen => int(f.ip_len as u64),
            Field::Tcp => int(tcp as u64),
            Field::Udp => int(!tcp as u64),
            Field::Sport => int(f.sport as u64),
            Field::Dport => int(f.dport as u64),
            Field::Dst => f.dst_v4.map(|a| int(u32::from(a) as u64)).unwrap_or(Value::Absent),
            Field::PayloadLen => int(f.payload_len as u64),
            Field::Payload => {
                Value::Str(f.payload_prefix().iter().map(|b| format!("{b:02x}")).collect())
            }
            Field::Flags => int(f.flags as u64),
            Field::Syn => int(f.is_syn() as u64),
            Field::Ns => int(f.ns as u64),
            Field::Seq => int(f.seq as u64),
            Field::Ack => int(f.ack as u64),
            Field::Window => int(f.window as u64),
            Field::Urg => int(f.urg_nz as u64),
            Field::Options => Value::Str(o.layout()),
            Field::OptCount => int(o.count as u64),
            Field::OptBad => int(o.bad as u64),
            Field::Mss => o.mss.map(|v| int(v as u64)).unwrap_or(Value::Absent),
            Field::Wscale => o.wscale.map(|v| int(v as u64)).unwrap_or(Value::Absent),
            Field::Ts => int(o.ts_val.is_some() as u64),
            Field::TsVal => o.ts_val.map(|v| int(v as u64)).unwrap_or(Value::Absent),
            Field::TsEcr => int(o.ts_ecr_nz as u64),
            Field::EolPad => int(o.eol_pad as u64),
            Field::TcpOptLen => int(f.tcp_opt_len as u64),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Expressions

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BinOp {
    Mul,
    Div,
    Rem,
    Add,
    Sub,
    Shl,
    Shr,
    BitAnd,
    BitXor,
    BitOr,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    And,
    Or,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Func {
    Bswap32,
    Bswap16,
    StartsWith,
    Contains,
}

#[derive(Clone, Debug)]
enum Expr {
    Lit(Value),
    /// A field of this packet (`prev` false) or of the source's previous one.
    Field(Field, bool),
    Not(Box<Expr>),
    Bin(BinOp, Box<Expr>, Box<Expr>),
    Call(Func, Vec<Expr>),
    InSet(Box<Expr>, Vec<Value>),
    InRange(Box<Expr>, u64, u64),
}

struct Ctx<'a> {
    cur: &'a Features,
    prev: Option<&'a Features>,
}

impl Expr {
    fn eval(&self, c: &Ctx) -> Value {
        match self {
            Expr::Lit(v) => v.clone(),
            Expr::Field(f, false) => f.read(c.cur),
            Expr::Field(f, true) => c.prev.map(|p| f.read(p)).unwrap_or(Value::Absent),
            Expr::Not(e) => Value::Int(!e.eval(c).truthy() as u64),
            Expr::Bin(BinOp::And, a, b) => {
                Value::Int((a.eval(c).truthy() && b.eval(c).truthy()) as u64)
            }
            Expr::Bin(BinOp::Or, a, b) => {
                Value::Int((a.eval(c).truthy() || b.eval(c).truthy()) as u64)
            }
            Expr::Bin(op, a, b) => binary(*op, a.eval(c), b.eval(c)),
            Expr::Call(func, args) => {
                let v: Vec<Value> = args.iter().map(|a| a.eval(c)).collect();
                match (func, v.as_slice()) {
                    (Func::Bswap32, [Value::Int(x)]) => Value::Int((*x as u32).swap_bytes() as u64),
                    (Func::Bswap16, [Value::Int(x)]) => Value::Int((*x as u16).swap_bytes() as u64),
                    (Func::StartsWith, [Value::Str(s), Value::Str(p)]) => {
                        Value::Int(s.starts_with(p.as_str()) as u64)
                    }
                    (Func::Contains, [Value::Str(s), Value::Str(p)]) => {
                        Value::Int(s.contains(p.as_str()) as u64)
                    }
                    _ => Value::Absent,
                }
            }
            Expr::InSet(e, set) => match e.eval(c) {
                Value::Absent => Value::Int(0),
                v => Value::Int(set.contains(&v) as u64),
            },
            Expr::InRange(e, lo, hi) => match e.eval(c) {
                Value::Int(v) => Value::Int((*lo..=*hi).contains(&v) as u64),
                _ => Value::Int(0),
            },
        }
    }

    fn uses_prev(&self) -> bool {
        match self {
            Expr::Lit(_) => false,
            Expr::Field(_, p) => *p,
            Expr::Not(e) | Expr::InSet(e, _) | Expr::InRange(e, _, _) => e.uses_prev(),
            Expr::Bin(_, a, b) => a.uses_prev() || b.uses_prev(),
            Expr::Call(_, args) => args.iter().any(Expr::uses_prev),
        }
    }
}

fn binary(op: BinOp, a: Value, b: Value) -> Value {
    use BinOp::*;
    if matches!(op, Eq | Ne | Lt | Le | Gt | Ge) {
        let r = match (&a, &b) {
            (Value::Absent, _) | (_, Value::Absent) => false,
            _ => match op {
                Eq => a == b,
                Ne => a != b,
                _ => {
                    let ord = match (&a, &b) {
                        (Value::Int(x), Value::Int(y)) => x.cmp(y),
                        (Value::Str(x), Value::Str(y)) => x.cmp(y),
                        _ => return Value::Int(0),
                    };
                    match op {
                        Lt => ord.is_lt(),
                        Le => ord.is_le(),
                        Gt => ord.is_gt(),
                        _ => ord.is_ge(),
                    }
                }
            },
        };
        return Value::Int(r as u64);
    }
    let (Value::Int(x), Value::Int(y)) = (a, b) else {
        return Value::Absent;
    };
    Value::Int(match op {
        Mul => x.wrapping_mul(y),
        Div => match x.checked_div(y) {
            Some(v) => v,
            None => return Value::Absent,
        },
        Rem => match x.checked_rem(y) {
            Some(v) => v,
            None => return Value::Absent,
        },
        Add => x.wrapping_add(y),
        Sub => x.wrapping_sub(y),
        Shl => u32::try_from(y).ok().and_then(|s| x.checked_shl(s)).unwrap_or(0),
        Shr => u32::try_from(y).ok().and_then(|s| x.checked_shr(s)).unwrap_or(0),
        BitAnd => x & y,
        BitXor => x ^ y,
        BitOr => x | y,
        _ => unreachable!("logical and comparison operators are handled above"),
    })
}

// ---------------------------------------------------------------------------------------------
// Tokens and the expression parser

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Num(u64),
    Str(String),
    Ident(String),
    Op(&'static str),
}

const OPS: &[&str] = &[
    "..=", "==", "!=", "<=", ">=", "&&", "||", "<<", ">>", "<", ">", "!", "&", "|", "^", "+", "-",
    "*", "/", "%", "(", ")", "{", "}", ",", ".",
];

fn tokenize(s: &str) -> Result<Vec<Tok>, String> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            let t = s[start..i].replace('_', "");
            let n = if let Some(h) = t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                u64::from_str_radix(h, 16)
            } else {
                t.parse::<u64>()
            };
            out.push(Tok::Num(n.map_err(|_| format!("bad number '{}'", &s[start..i]))?));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(s[start..i].to_string()));
            continue;
        }
        if c == b'"' {
            let mut v = String::new();
            i += 1;
            loop {
                match b.get(i) {
                    None => return Err("unterminated string".into()),
                    Some(b'"') => {
                        i += 1;
                        break;
                    }
                    Some(b'\\') if matches!(b.get(i + 1), Some(b'"') | Some(b'\\')) => {
                        v.push(b[i + 1] as char);
                        i += 2;
                    }
                    Some(_) => {
                        let ch = s[i..].chars().next().unwrap_or('?');
                        v.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
            out.push(Tok::Str(v));
            continue;
        }
        for op in OPS {
            if s[i..].starts_with(op) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        let ch = s[i..].chars().next().unwrap_or('?');
        return Err(format!("unexpected character '{ch}'"));
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    at: usize,
    /// Nesting of `!` and parentheses, bounded so that no rule can exhaust the stack.
    depth: usize,
}

/// Limits on one expression (tokens, nesting): far beyond any sensible rule, and what keeps the
/// recursive parser, type check and evaluator within the stack.
const MAX_TOKENS: usize = 1024;
const MAX_DEPTH: usize = 64;

/// Binary operators by precedence level, loosest first (as in Rust).
const LEVELS: &[&[(&str, BinOp)]] = &[
    &[("||", BinOp::Or)],
    &[("&&", BinOp::And)],
    &[
        ("==", BinOp::Eq),
        ("!=", BinOp::Ne),
        ("<=", BinOp::Le),
        (">=", BinOp::Ge),
        ("<", BinOp::Lt),
        (">", BinOp::Gt),
    ],
    &[("|", BinOp::BitOr)],
    &[("^", BinOp::BitXor)],
    &[("&", BinOp::BitAnd)],
    &[("<<", BinOp::Shl), (">>", BinOp::Shr)],
    &[("+", BinOp::Add), ("-", BinOp::Sub)],
    &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
];
const CMP_LEVEL: usize = 2;

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.at)
    }

    fn eat(&mut self, op: &str) -> bool {
        if self.peek() == Some(&Tok::Op(leak(op))) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) { Ok(()) } else { Err(format!("expected '{op}' {}", self.here())) }
    }

    fn here(&self) -> String {
        match self.peek() {
            None => "at the end".into(),
            Some(Tok::Num(n)) => format!("before {n}"),
            Some(Tok::Str(s)) => format!("before \"{s}\""),
            Some(Tok::Ident(s)) => format!("before '{s}'"),
            Some(Tok::Op(o)) => format!("before '{o}'"),
        }
    }

    fn level(&mut self, l: usize) -> Result<Expr, String> {
        if l == LEVELS.len() {
            return self.unary();
        }
        let mut lhs = self.level(l + 1)?;
        if l == CMP_LEVEL && matches!(self.peek(), Some(Tok::Ident(s)) if s == "in") {
            self.at += 1;
            return self.membership(lhs);
        }
        loop {
            let Some(&(_, op)) = LEVELS[l].iter().find(|(s, _)| self.peek() == Some(&Tok::Op(s)))
            else {
                return Ok(lhs);
            };
            self.at += 1;
            let rhs = self.level(l + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
            if l == CMP_LEVEL {
                // `a == b == c` is a mistake, as in Rust.
                if LEVELS[l].iter().any(|(s, _)| self.peek() == Some(&Tok::Op(s))) {
                    return Err("comparisons cannot be chained; use && between them".into());
                }
                return Ok(lhs);
            }
        }
    }

    fn literal(&mut self) -> Result<Value, String> {
        match self.toks.get(self.at).cloned() {
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Value::Int(n))
            }
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(Value::Str(s))
            }
            Some(Tok::Ident(id)) => match CONSTANTS.iter().find(|(n, _)| *n == id) {
                Some((_, v)) => {
                    self.at += 1;
                    Ok(Value::Int(*v))
                }
                None => Err(format!("expected a number or a string {}", self.here())),
            },
            _ => Err(format!("expected a number or a string {}", self.here())),
        }
    }

    fn membership(&mut self, lhs: Expr) -> Result<Expr, String> {
        if self.eat("{") {
            let mut set = Vec::new();
            loop {
                set.push(self.literal()?);
                if self.eat("}") {
                    break;
                }
                self.expect(",")?;
            }
            return Ok(Expr::InSet(Box::new(lhs), set));
        }
        let Value::Int(lo) = self.literal()? else {
            return Err("a range needs numbers: x in 37..=59".into());
        };
        if !self.eat("..=") {
            return Err(format!("expected '..=' in a range (x in 37..=59) {}", self.here()));
        }
        let Value::Int(hi) = self.literal()? else {
            return Err("a range needs numbers: x in 37..=59".into());
        };
        if lo > hi {
            return Err(format!("empty range {lo}..={hi}"));
        }
        Ok(Expr::InRange(Box::new(lhs), lo, hi))
    }

    fn unary(&mut self) -> Result<Expr, String> {
        self.depth += 1;
        let e = if self.depth > MAX_DEPTH {
            Err(format!("expression nested more than {MAX_DEPTH} deep"))
        } else if self.eat("!") {
            self.unary().map(|e| Expr::Not(Box::new(e)))
        } else {
            self.primary()
        };
        self.depth -= 1;
        e
    }

    fn primary(&mut self) -> Result<Expr, String> {
        match self.toks.get(self.at).cloned() {
            Some(Tok::Num(n)) => {
                self.at += 1;
                Ok(Expr::Lit(Value::Int(n)))
            }
            Some(Tok::Str(s)) => {
                self.at += 1;
                Ok(Expr::Lit(Value::Str(s)))
            }
            Some(Tok::Op("(")) => {
                self.at += 1;
                let e = self.level(0)?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Ident(id)) => {
                self.at += 1;
                if id == "prev" {
                    self.expect(".")?;
                    let Some(Tok::Ident(name)) = self.toks.get(self.at).cloned() else {
                        return Err(format!("expected a field after 'prev.' {}", self.here()));
                    };
                    self.at += 1;
                    let f = Field::lookup(&name)
                        .ok_or_else(|| format!("unknown field 'prev.{name}'"))?;
                    return Ok(Expr::Field(f, true));
                }
                if self.eat("(") {
                    let func = match id.as_str() {
                        "bswap32" => Func::Bswap32,
                        "bswap16" => Func::Bswap16,
                        "starts_with" => Func::StartsWith,
                        "contains" => Func::Contains,
                        _ => return Err(format!("unknown function '{id}'")),
                    };
                    let mut args = Vec::new();
                    if !self.eat(")") {
                        loop {
                            args.push(self.level(0)?);
                            if self.eat(")") {
                                break;
                            }
                            self.expect(",")?;
                        }
                    }
                    return Ok(Expr::Call(func, args));
                }
                if let Some(f) = Field::lookup(&id) {
                    return Ok(Expr::Field(f, false));
                }
                if let Some((_, v)) = CONSTANTS.iter().find(|(n, _)| *n == id) {
                    return Ok(Expr::Lit(Value::Int(*v)));
                }
                Err(format!("unknown field '{id}'"))
            }
            _ => Err(format!("expected a field, number, string or '(' {}", self.here())),
        }
    }
}

/// The `&'static str` of an operator token (they all come from `OPS`).
fn leak(op: &str) -> &'static str {
    OPS.iter().copied().find(|o| *o == op).unwrap_or("")
}

/// Checks types, so that `options == 5` or `ttl + "x"` is a load-time error, not a silent
/// never-match.
fn check(e: &Expr) -> Result<Ty, String> {
    Ok(match e {
        Expr::Lit(Value::Str(_)) => Ty::Str,
        Expr::Lit(_) => Ty::Int,
        Expr::Field(f, _) => f.ty(),
        Expr::Not(e) => {
            check(e)?;
            Ty::Int
        }
        Expr::Bin(op, a, b) => {
            let (ta, tb) = (check(a)?, check(b)?);
            match op {
                BinOp::And | BinOp::Or => Ty::Int,
                BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                    if ta != tb {
                        return Err("comparing a string with a number".into());
                    }
                    Ty::Int
                }
                _ => {
                    if ta != Ty::Int || tb != Ty::Int {
                        return Err("arithmetic on a string".into());
                    }
                    Ty::Int
                }
            }
        }
        Expr::Call(func, args) => {
            let want: &[Ty] = match func {
                Func::Bswap32 | Func::Bswap16 => &[Ty::Int],
                Func::StartsWith | Func::Contains => &[Ty::Str, Ty::Str],
            };
            let got = args.iter().map(check).collect::<Result<Vec<_>, _>>()?;
            if got != want {
                return Err(format!("wrong arguments to {func:?} (expected {want:?})"));
            }
            Ty::Int
        }
        Expr::InSet(e, set) => {
            let t = check(e)?;
            for v in set {
                let tv = if matches!(v, Value::Str(_)) { Ty::Str } else { Ty::Int };
                if tv != t {
                    return Err("a set mixes strings and numbers with its field".into());
                }
            }
            Ty::Int
        }
        Expr::InRange(e, _, _) => {
            if check(e)? != Ty::Int {
                return Err("a range applies to numbers only".into());
            }
            Ty::Int
        }
    })
}

fn parse_expr(s: &str) -> Result<Expr, String> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err("empty expression".into());
    }
    if toks.len() > MAX_TOKENS {
        return Err(format!("expression longer than {MAX_TOKENS} tokens"));
    }
    let mut p = Parser { toks, at: 0, depth: 0 };
    let e = p.level(0)?;
    if p.at != p.toks.len() {
        return Err(format!("unexpected {}", p.here()));
    }
    check(&e)?;
    Ok(e)
}

// ---------------------------------------------------------------------------------------------
// Evidence templates

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fmt {
    Dec,
    Hex,
    Ip,
}

#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Field(Field, bool, Fmt),
}

#[derive(Clone, Debug)]
struct Template(Vec<Piece>);

impl Template {
    fn parse(s: &str) -> Result<Template, String> {
        let mut pieces = Vec::new();
        let mut text = String::new();
        let mut chars = s.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '{' if chars.peek() == Some(&'{') => {
                    chars.next();
                    text.push('{');
                }
                '}' if chars.peek() == Some(&'}') => {
                    chars.next();
                    text.push('}');
                }
                '{' => {
                    let mut name = String::new();
                    loop {
                        match chars.next() {
                            Some('}') => break,
                            Some(ch) => name.push(ch),
                            None => return Err("unclosed '{' in evidence".into()),
                        }
                    }
                    let (field, fmt) = match name.split_once(':') {
                        Some((f, "x")) => (f, Fmt::Hex),
                        Some((f, "ip")) => (f, Fmt::Ip),
                        Some((_, other)) => {
                            return Err(format!("unknown format ':{other}' (x or ip)"));
                        }
                        None => (name.as_str(), Fmt::Dec),
                    };
                    let field = field.trim();
                    let (prev, fname) = match field.strip_prefix("prev.") {
                        Some(f) => (true, f),
                        None => (false, field),
                    };
                    let f = Field::lookup(fname)
                        .ok_or_else(|| format!("unknown field '{field}' in evidence"))?;
                    if !text.is_empty() {
                        pieces.push(Piece::Text(std::mem::take(&mut text)));
                    }
                    pieces.push(Piece::Field(f, prev, fmt));
                }
                '}' => return Err("unmatched '}' in evidence (write '}}')".into()),
                c => text.push(c),
            }
        }
        if !text.is_empty() {
            pieces.push(Piece::Text(text));
        }
        Ok(Template(pieces))
    }

    fn render(&self, c: &Ctx) -> String {
        let mut s = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => s.push_str(t),
                Piece::Field(f, prev, fmt) => {
                    let v = if *prev { c.prev.map(|p| f.read(p)) } else { Some(f.read(c.cur)) };
                    match (v, fmt) {
                        (Some(Value::Int(n)), Fmt::Hex) => s.push_str(&format!("0x{n:x}")),
                        (Some(Value::Int(n)), Fmt::Ip) => {
                            s.push_str(&std::net::Ipv4Addr::from(n as u32).to_string())
                        }
                        (Some(Value::Int(n)), Fmt::Dec) => s.push_str(&n.to_string()),
                        (Some(Value::Str(t)), _) if t.is_empty() => s.push_str("none"),
                        (Some(Value::Str(t)), _) => s.push_str(&t),
                        _ => s.push('-'),
                    }
                }
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------------------------
// Rules and rule sets

/// One rule: a label, its class and specificity, the conditions (alternatives) and the
/// sentence that explains a match.
#[derive(Clone, Debug)]
pub struct Rule {
    pub label: String,
    pub class: Class,
    pub specificity: u8,
    /// Where it was defined: `FILE:LINE` of its `[label]` line.
    pub origin: String,
    matches: Vec<Expr>,
    evidence: Template,
}

impl Rule {
    /// Some condition refers to the previous packet of the source.
    pub fn uses_prev(&self) -> bool {
        self.matches.iter().any(Expr::uses_prev)
    }

    /// Whether any alternative matches `cur` (with `prev` the source's previous packet).
    pub fn matches(&self, cur: &Features, prev: Option<&Features>) -> bool {
        let c = Ctx { cur, prev };
        self.matches.iter().any(|m| m.eval(&c).truthy())
    }

    /// The evidence sentence for a match.
    pub fn evidence(&self, cur: &Features, prev: Option<&Features>) -> String {
        self.evidence.render(&Ctx { cur, prev })
    }
}

/// A rule that matched a packet, with its evidence.
#[derive(Clone, Debug)]
pub struct RuleMatch<'a> {
    pub rule: &'a Rule,
    pub evidence: String,
}

/// The rules, in file order (files in load order).
#[derive(Clone, Debug, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
}

/// The rule table portguard ships (`packaging/portguard.fp`), compiled in so that a missing
/// file never leaves portguard without its rules.
pub const BUILTIN: &str = include_str!("../../../packaging/portguard.fp");

impl RuleSet {
    /// The shipped table.
    pub fn builtin() -> RuleSet {
        RuleSet::parse(BUILTIN, "portguard.fp (built in)")
            .unwrap_or_else(|e| panic!("the shipped rule table does not parse: {e}"))
    }

    /// Reads and parses a rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RuleError> {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| RuleError {
            file: name.clone(),
            line: 0,
            msg: e.to_string(),
        })?;
        RuleSet::parse(&text, &name)
    }

    /// Adds another file's rules after these.
    pub fn extend(&mut self, other: RuleSet) {
        self.rules.extend(other.rules);
    }

    /// Parses rule-file text; `file` names it in errors.
    pub fn parse(text: &str, file: &str) -> Result<RuleSet, RuleError> {
        let fail = |line: usize, msg: String| RuleError { file: file.to_string(), line, msg };
        let mut rules = Vec::new();
        let mut cur: Option<Draft> = None;
        let mut lines = text.lines().enumerate();
        while let Some((i, raw)) = lines.next() {
            let lineno = i + 1;
            // Continuations: a trailing backslash joins the next line.
            let mut line = raw.to_string();
            while line.trim_end().ends_with('\\') {
                let t = line.trim_end();
                line = t[..t.len() - 1].to_string();
                match lines.next() {
                    Some((_, next)) => {
                        line.push(' ');
                        line.push_str(next);
                    }
                    None => return Err(fail(lineno, "a continued line ends the file".into())),
                }
            }
            let line = line.trim();
            if line.is_empty() || line.starts_with(';') || line.starts_with('#') {
                continue;
            }
            if let Some(rest) = line.strip_prefix('[') {
                let Some(label) = rest.strip_suffix(']') else {
                    return Err(fail(lineno, format!("'{line}' is missing its closing ']'")));
                };
                let label = label.trim();
                if label.is_empty() {
                    return Err(fail(lineno, "empty label '[]'".into()));
                }
                if let Some(d) = cur.take() {
                    rules.push(d.finish(file).map_err(|(l, m)| fail(l, m))?);
                }
                cur = Some(Draft::new(label, lineno));
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                return Err(fail(
                    lineno,
                    format!("expected 'key = value' or '[label]', got '{line}'"),
                ));
            };
            let (key, value) = (key.trim(), value.trim());
            let Some(d) = cur.as_mut() else {
                return Err(fail(lineno, format!("'{key}' before any '[label]' line")));
            };
            d.set(key, value).map_err(|m| fail(lineno, m))?;
        }
        if let Some(d) = cur.take() {
            rules.push(d.finish(file).map_err(|(l, m)| fail(l, m))?);
        }
        Ok(RuleSet { rules })
    }

    /// Every rule that matches `cur` (given the source's previous packet), in file order.
    pub fn evaluate<'a>(&'a self, cur: &Features, prev: Option<&Features>) -> Vec<RuleMatch<'a>> {
        self.rules
            .iter()
            .filter(|r| r.matches(cur, prev))
            .map(|r| RuleMatch { rule: r, evidence: r.evidence(cur, prev) })
            .collect()
    }
}

/// A rule being read.
struct Draft {
    label: String,
    line: usize,
    class: Option<Class>,
    specificity: Option<u8>,
    matches: Vec<Expr>,
    evidence: Option<Template>,
}

impl Draft {
    fn new(label: &str, line: usize) -> Draft {
        Draft {
            label: label.to_string(),
            line,
            class: None,
            specificity: None,
            matches: Vec::new(),
            evidence: None,
        }
    }

    fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        match key {
            "class" => {
                if self.class.is_some() {
                    return Err(format!("second 'class' in [{}]", self.label));
                }
                self.class = Some(Class::parse(value).ok_or_else(|| {
                    format!("unknown class '{value}' (scanner, worm, os or misc)")
                })?);
            }
            "specificity" => {
                if self.specificity.is_some() {
                    return Err(format!("second 'specificity' in [{}]", self.label));
                }
                let n: u8 = value.parse().ok().filter(|n| *n <= 100).ok_or_else(|| {
                    format!("specificity '{value}' is not a number from 0 to 100")
                })?;
                self.specificity = Some(n);
            }
            "match" => self.matches.push(parse_expr(value)?),
            "evidence" => {
                if self.evidence.is_some() {
                    return Err(format!("second 'evidence' in [{}]", self.label));
                }
                self.evidence = Some(Template::parse(value)?);
            }
            other => {
                return Err(format!(
                    "unknown key '{other}' (class, specificity, match or evidence)"
                ));
            }
        }
        Ok(())
    }

    fn finish(self, file: &str) -> Result<Rule, (usize, String)> {
        let what = |k: &str| (self.line, format!("[{}] has no '{k}'", self.label));
        let class = self.class.ok_or_else(|| what("class"))?;
        if self.matches.is_empty() {
            return Err(what("match"));
        }
        let evidence = self.evidence.ok_or_else(|| what("evidence"))?;
        Ok(Rule {
            origin: format!("{file}:{}", self.line),
            label: self.label,
            class,
            specificity: self.specificity.unwrap_or(50),
            matches: self.matches,
            evidence,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fingerprint::features::{tcp_flags::*, testframes::*};

    fn syn(
        src: [u8; 4],
        dst: [u8; 4],
        id: u16,
        sport: u16,
        seq: u32,
        win: u16,
        o: &[u8],
    ) -> Features {
        Features::from_frame(&tcp4(src, dst, 255, id, false, sport, 2745, seq, 0, SYN, win, o))
            .unwrap()
    }

    fn one(rule: &str) -> RuleSet {
        RuleSet::parse(rule, "t.fp").unwrap()
    }

    #[test]
    fn expressions_follow_rust_precedence() {
        // IP ID (0xc612_0001 ^ 2745 ^ 0x0102_0304) & 0xffff, as masscan sets it.
        let f = syn([1, 2, 3, 4], [198, 18, 0, 1], 0x09bc, 1000, 0x0102_0304, 1024, &[]);
        let t = |e: &str| parse_expr(e).unwrap().eval(&Ctx { cur: &f, prev: None }).truthy();
        // `&` binds tighter than `==`, as in Rust (C would compare first, then mask: false).
        assert!(t("ip_id == (dst ^ dport ^ seq) & 0xffff"));
        assert!(!t("(ip_id == (dst ^ dport ^ seq)) & 0xffff"));
        assert!(t("1 + 2 * 3 == 7"));
        assert!(t("1 << 4 + 1 == 32"));
        assert!(t("6 & 3 ^ 1 == 3"));
        assert!(t("!(1 == 2) && (1 == 2 || 2 == 2)"));
        assert!(t("window in {512, 1024}") && !t("window in {512}"));
        assert!(t("ttl in 200..=255") && !t("ttl in 37..=59"));
        assert!(t("options == \"\"") && t("syn") && !t("udp") && t("flags == SYN"));
        assert!(t("bswap32(0x01020304) == 0x04030201") && t("bswap16(0x0102) == 0x0201"));
        // Absent values: every comparison false, even `!=`.
        assert!(!t("mss == 0") && !t("mss != 0") && !t("prev.sport != 1") && t("!(mss == 0)"));
        assert!(!t("seq / 0 == 0") && !t("seq % 0 != 1"));
        assert!(t("1 << 64 == 0"));
        let v6 = Features { dst_v4: None, ..f };
        assert!(!parse_expr("dst == 0").unwrap().eval(&Ctx { cur: &v6, prev: None }).truthy());
    }

    #[test]
    fn relations_across_packets() {
        let r = one("[hping3]\nclass = scanner\nspecificity = 90\n\
             match = syn && window == 512 && sport == prev.sport + 1\n\
             evidence = source port {prev.sport} then {sport}\n");
        let a = syn([1, 1, 1, 1], [2, 2, 2, 2], 1, 3000, 1, 512, &[]);
        let b = Features { sport: 3001, ..a };
        assert!(r.rules[0].uses_prev());
        assert!(r.evaluate(&a, None).is_empty());
        let m = r.evaluate(&b, Some(&a));
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].evidence, "source port 3000 then 3001");
        assert!(r.evaluate(&a, Some(&b)).is_empty());
    }

    #[test]
    fn evidence_formats() {
        let r =
            one("[x]\nclass=misc\nmatch=tcp\nevidence=id {ip_id:x} to {dst:ip} opts {options} \
             {{literal}} mss {mss}\n");
        let f = syn([1, 1, 1, 1], [198, 18, 0, 1], 0xbeef, 1, 1, 1, &[]);
        assert_eq!(
            r.evaluate(&f, None)[0].evidence,
            "id 0xbeef to 198.18.0.1 opts none {literal} mss -"
        );
    }

    #[test]
    fn mistakes_are_one_line_errors_with_file_and_line() {
        let cases = [
            ("[a]\nclass = scanner\nmatch = ttl ==\nevidence = x\n", 3, "expected a field"),
            ("[a]\nclass = robot\n", 2, "unknown class"),
            ("class = scanner\n", 1, "before any '[label]'"),
            ("[a]\nclass = os\nevidence = x\n", 1, "has no 'match'"),
            ("[a]\nclass = os\nmatch = tcp\n", 1, "has no 'evidence'"),
            ("[a]\nmatch = tcp\nevidence = x\n[b]\n", 1, "has no 'class'"),
            ("[a]\nclass = os\nmatch = options == 5\nevidence = x\n", 3, "string with a number"),
            ("[a]\nclass = os\nmatch = nosuch == 5\nevidence = x\n", 3, "unknown field 'nosuch'"),
            ("[a]\nclass = os\nmatch = ttl in 5..9\nevidence = x\n", 3, "'..='"),
            ("[a]\nclass = os\nmatch = ttl == 1 == 1\nevidence = x\n", 3, "chained"),
            ("[a]\nclass = os\nmatch = tcp\nevidence = {nosuch}\n", 4, "unknown field 'nosuch'"),
            ("[a]\nclass = os\nmatch = tcp\nevidence = {ttl\n", 4, "unclosed"),
            ("[a]\nclass = os\nspecificity = 101\n", 3, "0 to 100"),
            ("[a]\ncolour = red\n", 2, "unknown key 'colour'"),
            ("[a\n", 1, "closing ']'"),
            ("[a]\nclass = os\nmatch = \"abc\n", 3, "unterminated string"),
            ("[a]\nclass = os\nmatch = ttl @ 3\n", 3, "unexpected character '@'"),
            ("[a]\nclass = os\nmatch = frob(ttl)\n", 3, "unknown function"),
            ("[a]\nclass = os\nmatch = bswap32(options)\n", 3, "wrong arguments"),
            ("[a]\nclass = os\nmatch = ttl + \\\n", 3, "continued line ends"),
            ("[a]\nclass = os\nmatch = 99999999999999999999 == ttl\n", 3, "bad number"),
            (&format!("[a]\nclass = os\nmatch = {}ttl\n", "(".repeat(200)), 3, "nested more than"),
            (&format!("[a]\nclass = os\nmatch = ttl{}\n", " + 1".repeat(600)), 3, "longer than"),
        ];
        for (text, line, what) in cases {
            let e = RuleSet::parse(text, "my.fp").unwrap_err();
            let s = e.to_string();
            assert!(
                s.starts_with(&format!("my.fp:{line}: ")) && s.contains(what),
                "{text:?} -> {s}"
            );
            assert!(!s.contains('\n'));
        }
        // Continuations and comments parse.
        let ok = RuleSet::parse(
            "; c\n# c\n[a]\nclass = os\nmatch = ttl == 64 && \\\n   df\nevidence = e\n",
            "x",
        )
        .unwrap();
        assert_eq!(ok.rules[0].specificity, 50);
        assert_eq!(ok.rules[0].origin, "x:3");
    }

    #[test]
    fn random_text_never_panics() {
        // Byte soup made of the language's own pieces: an error or a rule set, never a panic.
        let pieces = [
            "[",
            "]",
            "a",
            "=",
            "class",
            "match",
            "evidence",
            "specificity",
            "os",
            "ttl",
            "==",
            "(",
            ")",
            "{",
            "}",
            "..=",
            "in",
            "\"",
            "prev",
            ".",
            "0x",
            "9",
            "&&",
            "!",
            "\n",
            " ",
            "\\",
            ",",
            "bswap32",
            ":x",
            "<<",
            "-",
        ];
        let mut seed = 0x2745u64;
        for _ in 0..3000 {
            let mut s = String::from("[r]\nclass = os\n");
            for _ in 0..(seed % 24) {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                s.push_str(pieces[(seed >> 33) as usize % pieces.len()]);
            }
            if let Ok(rs) = RuleSet::parse(&s, "fuzz") {
                let f = syn([1, 1, 1, 1], [2, 2, 2, 2], 1, 1, 1, 1, &[]);
                let _ = rs.evaluate(&f, Some(&f));
            }
        }
    }

    #[test]
    fn the_shipped_table_parses() {
        let rs = RuleSet::builtin();
        assert!(rs.rules.len() >= 10);
        for label in ["nmap", "masscan", "zmap", "hping3", "Mirai-like", "unicornscan-like"] {
            assert!(rs.rules.iter().any(|r| r.label == label), "{label} missing");
        }
    }
}

/// The rule README shows ("What is probing us") parses and does what it says.
#[cfg(test)]
mod readme {
    use super::*;
    use crate::fingerprint::features::{tcp_flags::SYN, testframes::tcp4};

    #[test]
    fn the_readme_rule_parses_and_matches() {
        let readme = include_str!("../../../README.md");
        let start = readme.find("; comments on lines").expect("the example in README.md");
        let end = readme[start..].find("```").unwrap();
        let rules = RuleSet::parse(&readme[start..start + end], "README.md").unwrap();
        let f =
            tcp4([198, 18, 0, 9], [198, 18, 0, 1], 64, 1, true, 40000, 2745, 1, 0, SYN, 2048, &[]);
        let f = Features::from_frame(&f).unwrap();
        let m = rules.evaluate(&f, None);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].evidence, "window 2048 from source port 40000 (our weekly audit)");
    }
}
