#!/usr/bin/env python3
"""What a hello arriving in pieces costs the relay.

Usage: benches/slow_hello.py BINARY SEGMENT_BYTES CONNECTIONS PAUSE_US

CONNECTIONS clients (ten at a time) each send the real Chromium hello from the fixtures in
SEGMENT_BYTES-byte segments (TCP_NODELAY), PAUSE_US apart, to BINARY relaying to a local
upstream; prints the relay's CPU per connection (from /proc, in 10 ms ticks: use enough
connections) and its recvfrom, setsockopt and epoll_wait calls per connection (`perf stat`;
EVENTS=a,b,... counts other events, say uprobes on malloc). The relay must log at info for
its "listening" line (the default).
Loopback only; needs `perf` (Debian `linux-perf`).
"""
import os, re, socket, subprocess, sys, threading, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary, seg, conns, pace = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]) / 1e6
hello = open(os.path.join(ROOT, 'tests/fixtures/hellos/real_chromium.bin'), 'rb').read()
up = socket.socket(); up.bind(('127.0.0.1', 0)); up.listen(1024)
def upstream():
    while True:
        c, _ = up.accept()
        def serve(c):
            got = 0
            while got < len(hello):
                d = c.recv(65536)
                if not d: break
                got += len(d)
            c.close()
        threading.Thread(target=serve, args=(c,), daemon=True).start()
threading.Thread(target=upstream, daemon=True).start()
relay = subprocess.Popen([binary, 'run', '--listen', '127.0.0.1:0', '--resolve',
    f'translate.googleapis.com=127.0.0.1:{up.getsockname()[1]}', '--config', os.path.join(ROOT, 'rules.json')],
    stderr=subprocess.PIPE, text=True)
port = None
for line in relay.stderr:
    m = re.search(r'listening addr=127\.0\.0\.1:(\d+)', line)
    if m: port = int(m.group(1)); break
threading.Thread(target=lambda: [None for _ in relay.stderr], daemon=True).start()
def cpu():
    f = open(f'/proc/{relay.pid}/stat').read().rsplit(')', 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf('SC_CLK_TCK')
perf = subprocess.Popen(['perf', 'stat', '-x,', '-e', os.environ.get('EVENTS', 'syscalls:sys_enter_recvfrom,syscalls:sys_enter_setsockopt,syscalls:sys_enter_epoll_wait'), '-p', str(relay.pid)], stderr=subprocess.PIPE, text=True)
time.sleep(0.5)
before = cpu()
def client(k):
    for _ in range(k):
        s = socket.create_connection(('127.0.0.1', port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for i in range(0, len(hello), seg):
            s.send(hello[i:i + seg])
            if pace: time.sleep(pace)
        while s.recv(65536): pass
        s.close()
threads = [threading.Thread(target=client, args=(conns // 10,)) for _ in range(10)]
[t.start() for t in threads]; [t.join() for t in threads]
used = cpu() - before
perf.send_signal(2); out = perf.communicate()[1]
relay.terminate(); relay.wait()
counts = {l.split(',')[2].split(':')[1]: int(l.split(',')[0]) for l in out.splitlines() if l.count(',') > 3 and l.split(',')[0].isdigit()}
print(f'{os.path.basename(binary)} seg={seg} conns={conns} cpu_ms_per_conn={used*1000/conns:.3f} ' + ' '.join(f'{k}/conn={v/conns:.1f}' for k, v in counts.items()))
