; portguard.fp: what sent a SYN (or a UDP datagram) to a guarded port.
;
; portguard has this table compiled in (this copy, /usr/share/doc/portguard/portguard.fp, is for
; reading); files you add with the same format are read after it: `portguard run --rules FILE`,
; or `rules = ["/etc/portguard/local.fp"]` under [fingerprint] in portguard.toml (SIGHUP reloads
; them). The format, in short (the full description is at the top of
; portguard/src/fingerprint/rules.rs):
;
;   [label]                       a rule; a label may have several rules
;   class       = scanner | worm | os | misc
;   specificity = 0..100          the most specific matching rule names the packet
;   match       = EXPRESSION      more `match` lines are alternatives
;   evidence    = SENTENCE with {field}, {field:x}, {field:ip}, {prev.field}
;
; An expression uses the packet's fields (ttl, df, ip_id, window, options, mss, seq, ack,
; sport, dport, dst, payload_len, ...), the previous packet of the same source and transport
; as prev.FIELD, Rust's operators and precedence, `x in {a, b}`, `x in lo..=hi`, and
; bswap32/bswap16/starts_with/contains. `syn` means SYN set with ACK, RST and FIN clear.
;
; Precedence: a matching scanner, worm or misc rule always wins over an OS stack, whatever
; p0f says. `os` rules name ordinary stacks; keep them strict, because a sender they match
; can never be called a scanner by a weaker rule.
;
; Each fact below was measured on the real tool (Debian 12 packages: nmap 7.93, masscan
; 1.3.2, zmap 2.1.1, hping3 3.a2) in a namespace lab; the Mirai-like, Windows-like and
; unicornscan-like senders follow their published sources (see portguard/tests/data/README).

; ------------------------------------------------------------------------------- worms ---

[Mirai-like]
class       = worm
specificity = 100
; Mirai's scanner writes the destination address into the sequence number.
match       = syn && version == 4 && seq == dst
evidence    = sequence number {seq} is the destination address {dst:ip} (Mirai's scanner)

; ---------------------------------------------------------------------------- scanners ---

[masscan]
class       = scanner
specificity = 95
; masscan's IP ID is its SYN cookie folded to 16 bits: (dst ^ dport ^ seq) & 0xffff.
match       = syn && version == 4 && options == "" && ip_id == (dst ^ dport ^ seq) & 0xffff
evidence    = IP ID {ip_id} == (dst ^ dport ^ seq) & 0xffff (masscan's SYN cookie), window {window}, no TCP options, TTL {ttl}

[masscan]
class       = scanner
specificity = 30
; masscan's UDP probe for a port it has no payload template for: TTL 255, no DF, empty.
match       = udp && version == 4 && ttl > 128 && !df && payload_len == 0 && ip_id != 54321
evidence    = empty UDP datagram with TTL {ttl} and no DF (masscan's raw UDP probe)

[zmap]
class       = scanner
specificity = 95
; zmap writes the constant 54321 into every IPv4 ID.
match       = syn && version == 4 && ip_id == 54321 && options == ""
evidence    = IP ID 54321 (zmap's constant), window {window}, no TCP options, TTL {ttl}

[zmap]
class       = scanner
specificity = 85
match       = udp && version == 4 && ip_id == 54321 && !df
evidence    = IP ID 54321 (zmap's constant) on a UDP probe, TTL {ttl}, {payload_len} payload bytes

[nmap]
class       = scanner
specificity = 90
; nmap's raw SYN probe: window 1024-4096 in steps of 1024 with one option, MSS 1460, no DF;
; TTL random in 37..59 over IPv4, hop limit 255 over IPv6 (where p0f says "Linux").
match       = syn && options == "mss" && mss == 1460 && window in {1024, 2048, 3072, 4096} && !df
evidence    = window {window} with a single option MSS {mss} and no DF (nmap's raw SYN probe), TTL {ttl}

[nmap]
class       = scanner
specificity = 40
; nmap -sU to a port without a payload template: an empty datagram, no DF, random TTL.
; Weak on its own (an empty datagram without DF from a BSD stack 5-27 hops away would match
; too; rare on 2745), hence the low specificity; the rule below sharpens it.
match       = udp && version == 4 && payload_len == 0 && !df && ttl in 37..=59
match       = udp && version == 6 && payload_len == 0 && ttl == 255 && !flow
evidence    = empty UDP datagram, no DF or flow label, TTL {ttl} (nmap -sU)

[nmap]
class       = scanner
specificity = 60
; nmap randomises the TTL of every raw probe; an OS stack keeps its own.
match       = udp && version == 4 && payload_len == 0 && !df && prev.payload_len == 0 && \
              ttl != prev.ttl && ttl in 37..=59 && prev.ttl in 37..=59
evidence    = empty UDP datagrams whose TTL changes between probes ({prev.ttl} then {ttl}; nmap -sU)

[hping3]
class       = scanner
specificity = 90
; hping3 leaves a random acknowledgment number in a SYN without ACK.
match       = syn && ack != 0 && window == 512 && options == ""
evidence    = acknowledgment number {ack} in a SYN without ACK, window 512, no TCP options (hping3 -S)

[hping3]
class       = scanner
specificity = 60
match       = syn && window == 512 && options == "" && !df
evidence    = window 512 with no TCP options and no DF (hping3 -S)

[hping3]
class       = scanner
specificity = 97
; hping3 increments the source port for every packet.
match       = syn && window == 512 && options == "" && sport == prev.sport + 1
match       = udp && !df && payload_len == 0 && prev.payload_len == 0 && ttl == prev.ttl && \
              sport == prev.sport + 1 && ip_id != 54321
evidence    = source port +1 per packet ({prev.sport} then {sport}), no TCP options (hping3)

[unicornscan-like]
class       = scanner
specificity = 95
; unicornscan hides a per-scan key in the sequence number:
;   seq = key ^ bswap32(dst) ^ ((dport << 16) + sport)
; so that expression without seq's key is the same for every SYN of one scan, while the
; ports or the destination change. A retransmission (same port, same sequence) is excluded.
match       = syn && version == 4 && prev.syn && prev.version == 4 && \
              (sport != prev.sport || dst != prev.dst) && \
              seq ^ bswap32(dst) ^ ((dport << 16) + sport) == \
              prev.seq ^ bswap32(prev.dst) ^ ((prev.dport << 16) + prev.sport)
evidence    = sequence numbers keyed alike across SYNs (seq ^ bswap32(dst) ^ (dport << 16 + sport) = {seq:x} ^ ..., unicornscan's TCPHASHTRACK)

; ---------------------------------------------------------------------------- OS stacks ---
; Ordinary stacks: the option layouts of their SYNs, their initial TTL (64 or 128, seen after
; some hops) and, over IPv4, DF. p0f's database (when installed) names versions; these rules
; keep portguard from calling such a sender unknown when p0f is absent or says "???" (p0f 3.09b
; has no signature for Linux over IPv6 with a flow label).

[Linux]
class       = os
specificity = 50
match       = syn && options == "mss,sok,ts,nop,ws" && ttl > 32 && ttl <= 64 && \
              (version == 6 || df) && window >= 1024
evidence    = TTL {ttl}, options mss,sok,ts,nop,ws, window {window}, ws {wscale} (a Linux stack)

[Windows]
class       = os
specificity = 50
match       = syn && options in {"mss,nop,ws,nop,nop,sok", "mss,nop,nop,sok"} && \
              ttl > 64 && ttl <= 128 && (version == 6 || df)
evidence    = TTL {ttl}, options {options}, window {window} (a Windows stack)

[macOS or iOS]
class       = os
specificity = 50
match       = syn && options == "mss,nop,ws,nop,nop,ts,sok,eol+1" && ttl > 32 && ttl <= 64 && \
              (version == 6 || df)
evidence    = TTL {ttl}, options {options}, window {window} (an Apple stack)

[FreeBSD]
class       = os
specificity = 50
match       = syn && options == "mss,nop,ws,sok,ts" && ttl > 32 && ttl <= 64 && (version == 6 || df)
evidence    = TTL {ttl}, options {options}, window {window} (a FreeBSD stack)

[UDP socket]
class       = os
specificity = 20
; A datagram from a socket: Linux sets DF on UDP over IPv4 and a flow label over IPv6; raw
; tools (nmap, masscan, zmap, hping3) set neither.
match       = udp && version == 4 && df && ttl <= 128
match       = udp && version == 6 && flow && ttl <= 128
evidence    = UDP datagram with {payload_len} payload bytes, TTL {ttl}, DF or a flow label (a socket's datagram)
