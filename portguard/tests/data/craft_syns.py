#!/usr/bin/python3
"""Crafted SYNs for the fingerprint tests, sent with scapy on a lab interface.

usage: craft_syns.py IFACE DST_MAC KIND SRC DST[,DST...] [COUNT]

KIND is one of:
  mirai    Mirai's scanner: TCP sequence number = destination IPv4 address, window random but
           fixed per bot, no options, TTL 64, random IP ID, no DF (scanner.c in the published
           Mirai source).
  windows  a Windows 10 connect(): TTL 128, DF, IP ID +1, window 64240, options
           MSS 1460, NOP, WS 8, NOP, NOP, SACK_PERM.
  windows6 the same over IPv6 (hop limit 128, MSS 1440, window 64800, a flow label).
  unicorn  unicornscan's default TCP scan (fingerprint 0: TTL 255, window 4128, MSS only, no
           DF), its sequence number keyed by a per-scan secret as TCPHASHTRACK does:
           seq = key ^ bswap32(dst) ^ ((dport << 16) + sport), a random source port per probe.
           unicornscan itself is not packaged in Debian.
"""
import random
import socket
import struct
import sys

from scapy.all import IP, TCP, Ether, IPv6, conf, sendp

conf.verb = 0
iface, dmac, kind, src = sys.argv[1:5]
dsts = sys.argv[5].split(',')
count = int(sys.argv[6]) if len(sys.argv) > 6 else 3
PORT = 2745


def be32(addr):
    return struct.unpack('!I', socket.inet_aton(addr))[0]


def bswap32(v):
    return struct.unpack('<I', struct.pack('!I', v))[0]


frames = []
if kind == 'mirai':
    win = random.randint(1000, 65535)
    for i in range(count):
        d = dsts[i % len(dsts)]
        frames.append(IP(src=src, dst=d, ttl=64, id=random.randint(1, 65535), flags=0) /
                      TCP(sport=random.randint(1024, 65535), dport=PORT, seq=be32(d), window=win, flags='S'))
elif kind in ('windows', 'windows6'):
    ipid = random.randint(1, 60000)
    for i in range(count):
        d = dsts[i % len(dsts)]
        if kind == 'windows':
            opts = [('MSS', 1460), ('NOP', None), ('WScale', 8), ('NOP', None), ('NOP', None), ('SAckOK', b'')]
            l3 = IP(src=src, dst=d, ttl=128, id=ipid + i, flags='DF')
            win = 64240
        else:
            opts = [('MSS', 1440), ('NOP', None), ('WScale', 8), ('NOP', None), ('NOP', None), ('SAckOK', b'')]
            l3 = IPv6(src=src, dst=d, hlim=128, fl=random.getrandbits(20))
            win = 64800
        frames.append(l3 / TCP(sport=50000 + i, dport=PORT, seq=random.getrandbits(32), window=win,
                                flags='S', options=opts))
elif kind == 'unicorn':
    key = random.getrandbits(32)
    for i in range(count):
        d = dsts[i % len(dsts)]
        sport = random.randint(1024, 65535)
        seq = key ^ bswap32(be32(d)) ^ (((PORT << 16) + sport) & 0xffffffff)
        frames.append(IP(src=src, dst=d, ttl=255, id=random.randint(1, 65535), flags=0) /
                      TCP(sport=sport, dport=PORT, seq=seq, window=4128, flags='S', options=[('MSS', 1460)]))
else:
    sys.exit('unknown kind ' + kind)

for f in frames:
    sendp(Ether(dst=dmac) / f, iface=iface)
