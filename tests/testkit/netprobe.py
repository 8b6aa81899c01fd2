#!/usr/bin/env python3
"""Traffic for skiff's datapath tests.

  serve NAME --tcp IP:PORT... --udp IP:PORT...
      answers every TCP connection and every UDP datagram with "NAME PEER"
      (PEER: the client address it saw) and exits when its standard input
      closes (so it dies with the test).
  tcp IP:PORT --count N [--mark FILE] [--gap SECONDS] [--seen FILE --seen-names K]
          [--progress FILE]
      N connections one after another; each reads the server's name. With
      --seen, FILE is created once K different names have answered; with
      --progress, FILE always holds how many connections were tried (a test
      waits for either instead of sleeping).
  udp IP:PORT --count N [--sockets K] [--mark FILE]
      N datagrams over K sockets (round robin), each answer read back.
  refused IP:PORT --proto tcp|udp
      one attempt that must fail: prints the error and how long it took.

Clients print one JSON object: answers per name (split before/after the
mark file appeared), failures with their errors, and whether every peer
address (getpeername, recvfrom) was the address dialled.
"""
import argparse, json, os, select, socket, sys, time


def addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def serve(a):
    name = a.name.encode()
    tcp, udp = [], []
    for t in a.tcp:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(addr(t))
        s.listen(4096)
        tcp.append(s)
    for u in a.udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(addr(u))
        udp.append(s)
    print("ready", flush=True)
    watch = tcp + udp + [sys.stdin]
    while True:
        ready, _, _ = select.select(watch, [], [])
        for s in ready:
            if s is sys.stdin:
                if not sys.stdin.readline():
                    return
            elif s in tcp:
                try:
                    c, peer = s.accept()
                    c.sendall(name + b" " + peer[0].encode() + b"\n")
                    c.close()
                except OSError:
                    pass
            else:
                try:
                    data, peer = s.recvfrom(2048)
                    s.sendto(name + b" " + peer[0].encode(), peer)
                except OSError:
                    pass


class Tally:
    def __init__(self, mark, seen=None, seen_names=0):
        self.mark = mark
        self.seen, self.seen_names = seen, seen_names
        self.before, self.after, self.failures = {}, {}, {}
        self.peer_mismatch = 0
        self.clients = set()

    def marked(self):
        return bool(self.mark) and os.path.exists(self.mark)

    def answer(self, text, after):
        name, _, client = text.strip().partition(" ")
        self.clients.add(client)
        d = self.after if after else self.before
        d[name] = d.get(name, 0) + 1
        if self.seen and len(set(self.before) | set(self.after)) >= self.seen_names:
            open(self.seen, "w").close()
            self.seen = None

    def fail(self, err):
        key = type(err).__name__ + ": " + (os.strerror(err.errno) if getattr(err, "errno", None) else str(err))
        self.failures[key] = self.failures.get(key, 0) + 1

    def dump(self):
        total = {}
        for d in (self.before, self.after):
            for k, v in d.items():
                total[k] = total.get(k, 0) + v
        print(json.dumps({
            "answers": total, "before": self.before, "after": self.after,
            "failures": self.failures, "failed": sum(self.failures.values()),
            "peerMismatch": self.peer_mismatch,
            "clientsSeen": sorted(self.clients),
        }), flush=True)


def progress(path, n):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(n))
    os.replace(tmp, path)


def tcp(a):
    target = addr(a.target)
    t = Tally(a.mark, a.seen, a.seen_names)
    for i in range(a.count):
        if a.progress:
            progress(a.progress, i)
        after = t.marked()
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(a.timeout)
        try:
            s.connect(target)
            if s.getpeername() != target:
                t.peer_mismatch += 1
            data = b""
            while not data.endswith(b"\n"):
                chunk = s.recv(256)
                if not chunk:
                    break
                data += chunk
            if data.endswith(b"\n"):
                t.answer(data.decode(), after)
            else:
                t.fail(ConnectionError("no answer"))
        except OSError as e:
            t.fail(e)
        finally:
            s.close()
        if a.gap:
            time.sleep(a.gap)
    if a.progress:
        progress(a.progress, a.count)
    t.dump()


def udp(a):
    target = addr(a.target)
    t = Tally(a.mark)
    socks = []
    for _ in range(a.sockets):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(a.timeout)
        socks.append(s)
    order = []
    for i in range(a.count):
        s = socks[i % len(socks)]
        after = t.marked()
        try:
            s.sendto(b"?", target)
            data, peer = s.recvfrom(2048)
            if peer != target:
                t.peer_mismatch += 1
            t.answer(data.decode(), after)
            order.append(data.decode().split(" ")[0])
        except OSError as e:
            t.fail(e)
            order.append(None)
        if a.gap:
            time.sleep(a.gap)
    if a.per_socket:
        # Which backend each socket reached, for consistent-hashing checks.
        print(json.dumps({"perSocket": order}), flush=True)
        # Keep the sockets (and their cookies) for a second round when asked.
        if a.second_round_after:
            while not os.path.exists(a.second_round_after):
                time.sleep(0.02)
            again = []
            for s in socks:
                try:
                    s.sendto(b"?", target)
                    data, _ = s.recvfrom(2048)
                    again.append(data.decode().split(" ")[0])
                except OSError:
                    again.append(None)
            print(json.dumps({"perSocket": again}), flush=True)
        return
    t.dump()


def refused(a):
    target = addr(a.target)
    kind = socket.SOCK_STREAM if a.proto == "tcp" else socket.SOCK_DGRAM
    s = socket.socket(socket.AF_INET, kind)
    s.settimeout(a.timeout)
    start = time.monotonic()
    err = None
    try:
        if kind == socket.SOCK_STREAM:
            s.connect(target)
        else:
            # Connected, so an ICMP error is reported to the socket.
            s.connect(target)
            s.send(b"?")
            s.recv(2048)
    except OSError as e:
        err = e
    ms = (time.monotonic() - start) * 1000
    print(json.dumps({
        "error": (os.strerror(err.errno) if err is not None and err.errno else repr(err)) if err is not None else None,
        "errno": getattr(err, "errno", None), "timeout": isinstance(err, socket.timeout), "ms": ms,
    }), flush=True)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("serve")
    s.add_argument("name")
    s.add_argument("--tcp", action="append", default=[])
    s.add_argument("--udp", action="append", default=[])
    for name in ("tcp", "udp"):
        c = sub.add_parser(name)
        c.add_argument("target")
        c.add_argument("--count", type=int, default=1)
        c.add_argument("--mark")
        c.add_argument("--gap", type=float, default=0)
        c.add_argument("--seen")
        c.add_argument("--seen-names", type=int, default=0)
        c.add_argument("--progress")
        c.add_argument("--timeout", type=float, default=2)
        if name == "udp":
            c.add_argument("--sockets", type=int, default=1)
            c.add_argument("--per-socket", action="store_true")
            c.add_argument("--second-round-after")
    r = sub.add_parser("refused")
    r.add_argument("target")
    r.add_argument("--proto", default="tcp")
    r.add_argument("--timeout", type=float, default=2)
    a = p.parse_args()
    {"serve": serve, "tcp": tcp, "udp": udp, "refused": refused}[a.cmd](a)


if __name__ == "__main__":
    main()
