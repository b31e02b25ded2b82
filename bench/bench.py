#!/usr/bin/env python3
"""dxf.py against curl, on a throwaway local registry.

Usage:
    python3 bench/bench.py                        # 1 GiB blob, 5 runs per command
    python3 bench/bench.py --size-mib 64 --runs 3 # quick
    python3 bench/bench.py --cases pull-null,startup --json out.json

Starts its own docker-registry (Docker distribution, plain http on a free
127.0.0.1 port, filesystem storage in a temporary directory), makes a random
big blob (--size-mib, default 1024) and a random 1 MiB one, and for each case
runs dxf in its two forms (with DXF_HOST and DXF_INSECURE=1, as a user
would) and the equivalent curl commands, interleaved, --runs times each:
    script     python3 dxf.py ...  (Python compiles the 195 KB script each
               time: ~120 ms and ~10 MiB of peak memory on a 2 GHz VM)
    installed  python3 -m dxf ...  with bytecode compiled beforehand, as
               ``pip install`` leaves it (and as ``from dxf import DXF`` runs)
Every command is run once first, untimed, and its result verified (pulled
bytes hash to the digest, pushed blobs are in the registry); a failing command
aborts the bench with its stderr.  Prints the median wall time of each, the
ratio dxf/reference with its target beside it and "pass" or "MISS" (one target
per form where they differ), and dxf's peak RSS (the largest over the runs,
from /usr/bin/time -f %M, else from os.wait4).  References are curl doing the
same requests, and, where curl alone does less work than dxf, curl plus what
makes up the difference: pipelines run as ``bash -o pipefail -c``, whose
digest (printed by openssl) is checked against the blob's on every run.  For the big blob it
also prints the CPU seconds dxf and the registry spent (os.wait4 and
/proc/PID/stat): with the registry on the same cores, (dxf + registry CPU)
/ cores is a floor no client can beat.  Everything it made (registry, blobs,
storage) is removed at the end.

Cases (--cases, comma-separated; default all):
    push-new        push a big file to a fresh repository each run
                    (curl: POST /v2/REPO/blobs/uploads/, PUT LOCATION&digest=
                    with -T FILE)                               target <= 1.10
    push-existing   push the big file again to a repository that has it
                    vs python3 -c pass + openssl dgst -sha256 FILE + curl
                    HEAD (start, hash, ask: the whole work)     target <= 1.15
    push-stdin      push-blob REPO - < FILE: the module's data= iterable
                    path (for its memory; the time is for information)
    pull-file       pull-blob -o FILE, and pull-blob > FILE (for information)
                    vs curl -o FILE                             target <= 1.15
                    -o FILE vs curl URL | tee FILE | openssl dgst -sha256,
                    then sync FILE (download, verify, make durable;
                    dxf -o fsyncs)      target <= 0.60 with SHA instructions,
                                                                   else 0.80
    pull-null       pull-blob > /dev/null vs curl -o /dev/null   target <= 1.5
                    vs curl URL | openssl dgst -sha256 (download
                    and verify)         target <= 0.75 with SHA instructions,
                                                                   else 1.0
    small-push      push 1 MiB to a fresh repository each run    target <= 3
    small-pull      pull-blob 1 MiB > FILE vs curl > FILE        target <= 3
    small-get-alias get-alias vs GET of the manifest             target <= 3
                    vs python3 -c pass + that curl GET (the two
                    timed one after the other, summed)  target <= 2.2 script,
                                                               <= 1.6 installed
    startup         dxf.py version vs python3 -c pass            target <= 3
                    dxf.py --help vs python3 -c pass             target <= 3
    wan             issue 11's tasks over a simulated wide-area link: the
                    test suite's token registry (https + token auth,
                    started by test_dxf.py's _Infra, so pytest must be
                    importable) and its token server, each behind a
                    ShapingProxy (RTT --wan-rtt ms, --wan-mbit per
                    connection); for dxf and for python-dxf's CLI (pip
                    installed into --python-dxf-venv, made if missing):
                    store 16 x 1 MiB under an alias (<= 1.5 x floor), fetch
                    them as 16 files (<= 1.3), one 64 MiB file each way
                    (<= 1.10), get-alias (<= 1.4), and (issue 19) one 256
                    MiB blob to a file, which dxf fetches in ranges over
                    several connections (<= 0.5 x the one-connection floor,
                    plus Python's start, measured as python3 -c pass).  All
                    connections share a --wan-shared-mbit (1000) bottleneck
                    each way.  --wan-tasks runs some: e.g. --wan-tasks
                    ranged.  Prints each run, the
                    floor and what it counts, connections, round trips
                    ("flights") and token requests, and dxf with the
                    shaper off (the machine's own cost).  Smaller payloads:
                    --wan-small-kib, --wan-big-mib, --wan-ranged-mib.
Peak RSS of dxf's big push and pulls, and of every dxf command the bench
ran: target <= 32 MiB as a script, <= 25 MiB installed (at any blob size).

Options: --runs N, --size-mib N, --cases LIST, --json PATH, --python EXE
(default: this interpreter, resolved, so a pyenv shim's start-up is not
counted), --dxf PATH (default ../dxf.py), --registry PATH, --tmpdir DIR.
Standard library only; Python 3.6+.
"""

import argparse
import collections
import datetime
import hashlib
import json
import os
import platform
import shutil
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
MIB = 1 << 20
TIME_BIN = '/usr/bin/time'

CASES = ['push-new', 'push-existing', 'push-stdin', 'pull-file', 'pull-null',
         'small-push', 'small-pull', 'small-get-alias', 'startup', 'wan']
MEMORY_TARGET_MIB = dict(dxf=32.0, inst=25.0)    # script, installed
OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
PYTHON_DXF_VERSION = '12.1.1'

# The round trips a perfect client cannot avoid on a fresh start, the TLS
# 1.3 handshake being one, with independent blobs' requests in parallel.
_START = 'TCP + TLS to the registry, its 401, TCP + TLS + GET to the token server'
WAN_FLOOR = collections.OrderedDict([
    ('store', (10, _START + ' (6), HEAD, POST, PUT with the body, manifest PUT')),
    ('fetch', (8, _START + ' (6), manifest GET, blob GETs')),
    ('push1', (9, _START + ' (6), HEAD, POST, PUT with the body')),
    ('pull1', (7, _START + ' (6), blob GET')),
    ('list', (7, _START + ' (6), manifest GET')),
    ('ranged', (7, _START + ' (6), blob GET; the bytes over one connection')),
])
# ranged: against 0.5 x floor + Python's start (its ratio leaves the start out)
# Issue 15: every task against its floor plus Python's start (python3 -c
# pass, measured in the same run), as no Python program starts for free.
WAN_TARGETS = dict(store=1.4, fetch=1.2, push1=1.08, pull1=1.08, list=1.3,
                   ranged=0.5)


def size_text(n):
    return '%d MiB' % (n // MIB) if n % MIB == 0 else '%d KiB' % (n // 1024)


def cost_text(run):
    return '%d proc, %d conn, %d flights, %d token' % (
        run['processes'], run['connections'], run['flights'], run['tokens'])


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write('bench: %s\n' % msg)
    sys.stderr.flush()


def free_port():
    s = socket.socket()
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]
    s.close()
    return port


def sha256_file(path):
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for piece in iter(lambda: f.read(4 * MIB), b''):
            h.update(piece)
    return 'sha256:' + h.hexdigest()


def make_blob(path, size):
    """A file of ``size`` random bytes; returns its digest."""
    h = hashlib.sha256()
    with open(path, 'wb') as f:
        left = size
        while left:
            piece = os.urandom(min(left, 16 * MIB))
            h.update(piece)
            f.write(piece)
            left -= len(piece)
    return 'sha256:' + h.hexdigest()


def clean_env():
    """os.environ without DXF_* and proxy settings (all traffic is local)."""
    env = {}
    for k, v in os.environ.items():
        if k.startswith('DXF_') or k.lower() in (
                'http_proxy', 'https_proxy', 'all_proxy', 'no_proxy'):
            continue
        env[k] = v
    return env


def first_line(path):
    try:
        with open(path) as f:
            return f.readline().strip()
    except OSError:
        return ''


def cpu_has_sha():
    """SHA instructions (x86 sha_ni, arm sha2): they make hashing, which
    dxf does on every byte, several times cheaper, so issue 15's pull
    targets are tighter there."""
    try:
        with open('/proc/cpuinfo') as f:
            flags = f.read().split()
    except OSError:
        return False
    return 'sha_ni' in flags or 'sha2' in flags


def cpu_model():
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or '?'


def cmd_sh(argv):
    """argv as a shell would need it."""
    return ' '.join(shlex.quote(a) for a in argv)


def cmd_text(argv):
    return ' '.join(a if a and not set(a) & set(' \'"&;*?<>|$') else
                    "'" + a.replace("'", "'\\''") + "'" for a in argv)


class Registry:
    """docker-registry serve, plain http on 127.0.0.1, storage in ``root``:
    started by test_dxf.serve, the launcher the tests and `make demo` use."""

    def __init__(self, binary, root):
        self.binary = binary
        self.root = root
        self.host = self.url = None
        self.proc = None
        self._reg = None

    def start(self):
        sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        import test_dxf
        try:
            self._reg = test_dxf.serve(self.root, self.binary)
        except RuntimeError as exc:
            raise BenchError(str(exc))
        self.host, self.url, self.proc = self._reg.host, self._reg.url, self._reg.proc

    def stop(self):
        if self._reg is not None:
            self._reg.stop()
        self._reg = self.proc = None

    def cpu(self):
        """User + system CPU seconds the registry has used so far."""
        try:
            with open('/proc/%d/stat' % self.proc.pid) as f:
                fields = f.read().rsplit(')', 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / float(
                os.sysconf('SC_CLK_TCK'))
        except (OSError, ValueError, IndexError, AttributeError):
            return float('nan')

    def version(self):
        try:
            out = subprocess.run([self.binary, '--version'],
                                 stdout=subprocess.PIPE,
                                 stderr=subprocess.STDOUT, timeout=10).stdout
            return out.decode('utf-8', 'replace').strip()
        except (OSError, subprocess.SubprocessError):
            return '?'


class Runner:
    """Runs commands, timing them (wall) and measuring their peak RSS."""

    def __init__(self, tmp, env):
        self.tmp = tmp
        self.env = env
        self.use_time = os.access(TIME_BIN, os.X_OK)
        self.rss_file = os.path.join(tmp, 'rss.txt')
        self.current = None
        self.cpu_total = 0.0      # user + system seconds of every command run

    def kill_current(self):
        """Kill the command running now (the bench is being stopped)."""
        proc = self.current
        if proc is not None and proc.returncode is None:
            self._kill(proc)
            try:
                os.waitpid(proc.pid, 0)
            except OSError:
                pass

    @staticmethod
    def _kill(proc):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass

    def rss_method(self):
        return ('%s -f %%M' % TIME_BIN) if self.use_time else 'os.wait4'

    def run(self, argv, stdout='pipe', timeout=1800, stdin=None):
        """Run argv once; return (seconds, peak RSS KiB, stdout bytes).

        ``stdout``: 'pipe' (captured), 'null' (/dev/null) or a file path
        (created/truncated, as a shell's ``> FILE`` does); ``stdin``: a file
        path, else /dev/null.
        A non-zero exit raises BenchError with the command's stderr; a
        command still running after ``timeout`` seconds is killed.
        """
        full = list(argv)
        if self.use_time:
            full = [TIME_BIN, '-f', '%M', '-o', self.rss_file] + full
        outf = None
        if stdout == 'pipe':
            out = subprocess.PIPE
        elif stdout == 'null':
            out = subprocess.DEVNULL
        else:
            out = outf = open(stdout, 'wb')
        errf = tempfile.TemporaryFile(dir=self.tmp)
        inf = open(stdin, 'rb') if stdin else subprocess.DEVNULL
        try:
            t0 = time.perf_counter()
            # A session of its own: killing it reaches /usr/bin/time's child.
            # cwd: not the project, whose dxf.py python3 -m would import.
            proc = subprocess.Popen(full, stdout=out, stderr=errf,
                                    stdin=inf, env=self.env,
                                    cwd=self.tmp, start_new_session=True)
            self.current = proc
            timer = threading.Timer(timeout, self._kill, (proc,))
            timer.start()
            try:
                data = b''
                if out is subprocess.PIPE:
                    data = proc.stdout.read()
                    proc.stdout.close()
                # wait4 rather than wait: it also gives the child's rusage.
                _, status, usage = os.wait4(proc.pid, 0)
                elapsed = time.perf_counter() - t0
                self.current = None
                self.cpu_total += usage.ru_utime + usage.ru_stime
            finally:
                timer.cancel()
            proc.returncode = (os.WEXITSTATUS(status) if os.WIFEXITED(status)
                               else -os.WTERMSIG(status))
        finally:
            if outf is not None:
                outf.close()
            if stdin:
                inf.close()
        if proc.returncode != 0:
            errf.seek(0)
            err = errf.read().decode('utf-8', 'replace')
            errf.close()
            raise BenchError('command failed (exit %d): %s\n%s' % (
                proc.returncode, cmd_text(argv), err.rstrip()))
        errf.close()
        if self.use_time:
            rss = None
            with open(self.rss_file) as f:
                for line in f:
                    if line.strip().isdigit():
                        rss = int(line.strip())
            if rss is None:
                raise BenchError('no RSS from %s for %s' % (TIME_BIN,
                                                            cmd_text(argv)))
        else:
            rss = usage.ru_maxrss     # KiB on Linux
        return elapsed, rss, data


class Bench:
    def __init__(self, args):
        self.args = args
        self.python = args.python
        self.dxf = args.dxf
        self.tmp = tempfile.mkdtemp(prefix='dxf-bench-', dir=args.tmpdir)
        self.env = clean_env()
        self.registry = Registry(args.registry, self.tmp)
        self.runner = Runner(self.tmp, self.env)
        self.rows = []
        self.curl_push_cache = None
        self.repo_counter = 0

    # -- commands ------------------------------------------------------------

    def dxf_cmd(self, *args):
        return [self.python, self.dxf] + list(args)

    def inst_cmd(self, *args):
        """dxf as installed: a module with its bytecode compiled."""
        return [self.python, '-m', 'dxf'] + list(args)

    def forms(self, *args):
        """[('dxf', script argv), ('inst', installed argv)]."""
        return [('dxf', self.dxf_cmd(*args)), ('inst', self.inst_cmd(*args))]

    def curl_cmd(self, *args):
        return ['curl', '-q', '-sS', '-f'] + list(args)

    def url(self, repo, *parts):
        return '%s/v2/%s/%s' % (self.registry.url, repo, '/'.join(parts))

    def fresh_repo(self, what):
        self.repo_counter += 1
        return 'bench/%s-%d-%s' % (what, self.repo_counter,
                                   os.urandom(4).hex())

    def run(self, argv, stdout='pipe', stdin=None):
        return self.runner.run(argv, stdout, stdin=stdin)

    def curl_push(self, path, digest, repo):
        """POST + PUT -T (streamed); returns (seconds, max RSS KiB)."""
        t1, rss1, headers = self.run(self.curl_cmd(
            '-X', 'POST', '-D', '-', '-o', '/dev/null',
            self.url(repo, 'blobs', 'uploads/')))
        t0 = time.perf_counter()
        location = None
        for line in headers.decode('latin-1').splitlines():
            if line.lower().startswith('location:'):
                location = line.split(':', 1)[1].strip()
        if not location:
            raise BenchError('POST upload: no Location in\n%s'
                             % headers.decode('latin-1'))
        location = urllib.parse.urljoin(self.url(repo, 'blobs', 'uploads/'),
                                        location)
        sep = '&' if '?' in location else '?'
        put_url = location + sep + 'digest=' + digest
        parse = time.perf_counter() - t0
        t2, rss2, headers = self.run(self.curl_cmd(
            '-T', path, '-D', '-', '-o', '/dev/null', put_url))
        text = headers.decode('latin-1')
        statuses = [line.split()[1] for line in text.splitlines()
                    if line.startswith('HTTP/') and len(line.split()) > 1]
        if statuses[-1:] != ['201'] or digest not in text:
            raise BenchError('PUT upload: unexpected answer\n%s' % text)
        return t1 + parse + t2, max(rss1, rss2)

    def check_blob(self, repo, digest, size):
        _, _, headers = self.run(self.curl_cmd(
            '-I', self.url(repo, 'blobs', digest)))
        text = headers.decode('latin-1').lower()
        if 'content-length: %d' % size not in text:
            raise BenchError('blob %s not in %s after the push:\n%s'
                             % (digest, repo, text))

    def check_file(self, path, digest, what):
        got = sha256_file(path)
        if got != digest:
            raise BenchError('%s: output hashes to %s, not %s'
                             % (what, got, digest))

    @staticmethod
    def pipeline(script):
        """argv running a shell pipeline: fails if any stage fails."""
        return ['bash', '-o', 'pipefail', '-c', script]

    @staticmethod
    def check_dgst(out, digest, what):
        """``out``: what ``openssl dgst -sha256`` printed (its last word is
        the hex digest: "SHA2-256(stdin)= HEX", or "(stdin)= HEX")."""
        words = out.decode('latin-1').split()
        if not words or 'sha256:' + words[-1].lower() != digest:
            raise BenchError('%s: openssl printed %r, not the digest %s'
                             % (what, out, digest))

    def check_stream(self, argv, digest, what):
        """Run argv with stdout piped through sha256 (a verification run)."""
        h = hashlib.sha256()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=self.env,
                                cwd=self.tmp)
        for piece in iter(lambda: proc.stdout.read(4 * MIB), b''):
            h.update(piece)
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise BenchError('command failed (exit %d): %s\n%s' % (
                proc.returncode, cmd_text(argv),
                err.decode('utf-8', 'replace').rstrip()))
        if 'sha256:' + h.hexdigest() != digest:
            raise BenchError('%s: output does not hash to %s' % (what, digest))

    @staticmethod
    def quiesce():
        """Flush dirty pages so one run's writeback does not slow the next."""
        if hasattr(os, 'sync'):
            os.sync()

    def remove(self, *paths):
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass

    def interleave(self, commands):
        """Run each (name, fn) --runs times, rotating which goes first.

        ``fn(i)`` returns (seconds, RSS KiB).  Returns {name: [(s, rss,
        CPU s of the commands, CPU s of the registry meanwhile)]}.
        """
        results = {name: [] for name, _ in commands}
        n = len(commands)
        for i in range(self.args.runs):
            order = commands[i % n:] + commands[:i % n]
            for name, fn in order:
                self.quiesce()
                cpu, reg = self.runner.cpu_total, self.registry.cpu()
                s, rss = fn(i)
                results[name].append((s, rss, self.runner.cpu_total - cpu,
                                      self.registry.cpu() - reg))
        return results

    def add_row(self, key, label, res, target, applies=True, curl_label=None,
                dxf='dxf', inst='inst', curl='curl'):
        """``target``: one ratio for both forms, or (script, installed)."""
        if not isinstance(target, tuple):
            target = (target, target)
        row = dict(case=key, label=label, target=target[0],
                   dxf_target=target[0], inst_target=target[1],
                   target_applies=applies, curl_label=curl_label,
                   samples=dict(dxf=dxf, inst=inst, curl=curl))
        for form, name in (('dxf', dxf), ('inst', inst), ('curl', curl)):
            samples = res.get(name) or []
            row[form + '_seconds'] = [x[0] for x in samples]
            row[form + '_rss_kib'] = [x[1] for x in samples]
            row[form + '_cpu'] = [x[2] for x in samples]
            row[form + '_registry_cpu'] = [x[3] for x in samples]
        self.rows.append(row)

    # -- setup ---------------------------------------------------------------

    def setup(self):
        args = self.args
        self.big_size = args.size_mib * MIB
        self.big_label = ('1 GiB' if args.size_mib == 1024
                          else '%d MiB' % args.size_mib)
        self.big = os.path.join(self.tmp, 'big.bin')
        self.small = os.path.join(self.tmp, 'small.bin')
        self.small_size = MIB
        log('making %s and 1 MiB of random data in %s'
            % (self.big_label, self.tmp))
        self.big_digest = make_blob(self.big, self.big_size)
        self.small_digest = make_blob(self.small, self.small_size)
        inst = os.path.join(self.tmp, 'installed')
        os.mkdir(inst)
        shutil.copy(self.dxf, os.path.join(inst, 'dxf.py'))
        subprocess.run([self.python, '-m', 'compileall', '-q', inst],
                       check=True)
        self.env['PYTHONPATH'] = inst     # for python3 -m dxf
        self.registry.start()
        log('started %s on %s' % (args.registry, self.registry.host))
        self.env['DXF_HOST'] = self.registry.host
        self.env['DXF_INSECURE'] = '1'
        # Blobs the pull cases read, pushed with curl (untimed).
        self.big_repo = 'bench/big'
        self.small_repo = 'bench/small'
        self.curl_push(self.big, self.big_digest, self.big_repo)
        self.check_blob(self.big_repo, self.big_digest, self.big_size)
        self.curl_push(self.small, self.small_digest, self.small_repo)
        self.alias = 'bench'
        self.run(self.dxf_cmd('set-alias', self.small_repo, self.alias,
                              self.small_digest))

    # -- cases ---------------------------------------------------------------

    def curl_push_fn(self, i):
        return self.curl_push(self.big, self.big_digest,
                              self.fresh_repo('curl-push'))

    def push_fn(self, argv_of, path, digest, check, stdin=None):
        """A timed push of ``path`` (argv_of(repo) -> argv), output checked."""
        def fn(i):
            repo = self.fresh_repo('dxf-push') if check else self.big_repo
            s, rss, out = self.run(argv_of(repo), stdin=stdin)
            if out.decode().strip() != digest:
                raise BenchError('push-blob printed %r, not %s' % (out, digest))
            if check and i == 0:
                self.check_blob(repo, digest, os.path.getsize(path))
            return s, rss
        return fn

    def case_push_new(self):
        res = self.interleave([
            (name, self.push_fn(lambda repo, c=cmd: c('push-blob', repo,
                                                      self.big),
                                self.big, self.big_digest, True))
            for name, cmd in (('dxf', self.dxf_cmd), ('inst', self.inst_cmd))
        ] + [('curl', self.curl_push_fn)])
        self.curl_push_cache = res['curl']
        self.add_row('push-new', 'push %s, new' % self.big_label, res, 1.10,
                     curl_label='curl POST + PUT -T')

    def case_push_existing(self):
        # Issue 15's reference: the whole work of a push of a blob already
        # there is starting Python, hashing the file and one HEAD.
        base = [self.python, '-c', 'pass']
        dgst = ['openssl', 'dgst', '-sha256', self.big]
        head = self.curl_cmd('-I', self.url(self.big_repo, 'blobs', self.big_digest))

        def hash_head(i):
            s1, rss1, _ = self.run(base)
            s2, rss2, out = self.run(dgst, 'pipe')
            self.check_dgst(out, self.big_digest, 'openssl dgst')
            s3, rss3, _ = self.run(head)
            return s1 + s2 + s3, max(rss1, rss2, rss3)
        hash_head(0)      # warm-up, checked
        res = self.interleave([
            (name, self.push_fn(lambda repo, c=cmd: c('push-blob', repo,
                                                      self.big),
                                self.big, self.big_digest, False))
            for name, cmd in (('dxf', self.dxf_cmd), ('inst', self.inst_cmd))]
            + [('hash-head', hash_head)])
        self.add_row('push-existing', 'push %s, already there'
                     % self.big_label, res, 1.15, curl='hash-head',
                     curl_label='python3 -c pass + openssl dgst FILE + curl HEAD')

    def case_push_stdin(self):
        res = self.interleave([
            (name, self.push_fn(lambda repo, c=cmd: c('push-blob', repo, '-'),
                                self.big, self.big_digest, True, self.big))
            for name, cmd in (('dxf', self.dxf_cmd), ('inst', self.inst_cmd))])
        if self.curl_push_cache is None:
            self.curl_push_cache = self.interleave(
                [('curl', self.curl_push_fn)])['curl']
        res['curl'] = self.curl_push_cache
        self.add_row('push-stdin', 'push %s from stdin' % self.big_label, res,
                     1.10, applies=False, curl_label='curl POST + PUT -T')

    def case_pull_file(self):
        out = os.path.join(self.tmp, 'pulled.bin')
        repo, digest = self.big_repo, self.big_digest
        dxf_o = self.forms('pull-blob', repo, digest, '-o', out)
        dxf_gt = self.dxf_cmd('pull-blob', repo, digest)
        curl_o = self.curl_cmd('-o', out, self.url(repo, 'blobs', digest))
        # Download, verify and make durable, as dxf -o does (it fsyncs).
        curl_tee = self.pipeline('%s | tee %s | openssl dgst -sha256 && sync %s'
                                 % (cmd_sh(self.curl_cmd(self.url(repo, 'blobs',
                                                                  digest))),
                                    shlex.quote(out), shlex.quote(out)))
        # Verification runs (untimed).
        for argv, stdout, what in ((dxf_o[0][1], 'pipe', 'dxf -o'),
                                   (dxf_o[1][1], 'pipe', 'installed dxf -o'),
                                   (dxf_gt, out, 'dxf > FILE'),
                                   (curl_o, 'pipe', 'curl -o')):
            self.remove(out)
            self.run(argv, stdout)
            self.check_file(out, digest, what)
        self.remove(out)
        self.check_dgst(self.run(curl_tee)[2], digest, 'curl | tee | openssl')
        self.check_file(out, digest, 'curl | tee FILE')
        self.remove(out)

        def timed(argv, stdout, dgst=False):
            def fn(i):
                s, rss, printed = self.run(argv, stdout)
                if dgst:
                    self.check_dgst(printed, digest, cmd_text(argv))
                size = os.path.getsize(out)
                self.remove(out)
                if size != self.big_size:
                    raise BenchError('%s wrote %d bytes, not %d'
                                     % (cmd_text(argv), size, self.big_size))
                return s, rss
            return fn
        res = self.interleave([(name, timed(argv, 'pipe'))
                               for name, argv in dxf_o]
                              + [('dxf-gt', timed(dxf_gt, out)),
                                 ('curl', timed(curl_o, 'pipe')),
                                 ('curl-tee', timed(curl_tee, 'pipe', True))])
        self.add_row('pull-file', 'pull %s -o FILE' % self.big_label,
                     res, 1.15, curl_label='curl -o FILE')
        self.add_row('pull-file', 'pull %s -o FILE' % self.big_label,
                     res, 0.60 if cpu_has_sha() else 0.80, curl='curl-tee',
                     curl_label='curl | tee FILE | openssl dgst; sync FILE')
        self.add_row('pull-file', 'pull %s > FILE' % self.big_label,
                     res, 1.15, applies=False, curl_label='curl -o FILE',
                     dxf='dxf-gt', inst=None)

    def case_pull_null(self):
        repo, digest = self.big_repo, self.big_digest
        url = self.url(repo, 'blobs', digest)
        commands = []
        for name, argv in self.forms('pull-blob', repo, digest):
            self.check_stream(argv, digest, '%s > pipe' % name)
            commands.append((name, lambda i, a=argv: self.run(a, 'null')[:2]))
        self.check_stream(self.curl_cmd(url), digest, 'curl > pipe')
        curl = self.curl_cmd('-o', '/dev/null', url)
        # Download and verify, as dxf does.
        dgst = self.pipeline('%s | openssl dgst -sha256'
                             % cmd_sh(self.curl_cmd(url)))

        def curl_dgst(i):
            s, rss, out = self.run(dgst, 'pipe')
            self.check_dgst(out, digest, 'curl | openssl dgst')
            return s, rss
        curl_dgst(0)      # verification run (untimed)
        res = self.interleave(commands + [
            ('curl', lambda i: self.run(curl, 'pipe')[:2]),
            ('curl-dgst', curl_dgst)])
        self.add_row('pull-null', 'pull %s > /dev/null' % self.big_label,
                     res, 1.5, curl_label='curl -o /dev/null')
        self.add_row('pull-null', 'pull %s > /dev/null' % self.big_label,
                     res, 0.75 if cpu_has_sha() else 1.0, curl='curl-dgst',
                     curl_label='curl | openssl dgst -sha256')

    def case_small_push(self):
        commands = [
            (name, self.push_fn(lambda repo, c=cmd: c('push-blob', repo,
                                                      self.small),
                                self.small, self.small_digest, True))
            for name, cmd in (('dxf', self.dxf_cmd), ('inst', self.inst_cmd))]

        def curl(i):
            return self.curl_push(self.small, self.small_digest,
                                  self.fresh_repo('curl-small'))
        commands.append(('curl', curl))
        for _, fn in commands:
            fn(0)      # warm-up, verified
        res = self.interleave(commands)
        self.add_row('small-push', 'push 1 MiB, new', res, 3.0,
                     curl_label='curl POST + PUT -T')

    def case_small_pull(self):
        out = os.path.join(self.tmp, 'small-pulled.bin')
        repo, digest = self.small_repo, self.small_digest
        commands = self.forms('pull-blob', repo, digest) + [
            ('curl', self.curl_cmd(self.url(repo, 'blobs', digest)))]
        for name, argv in commands:
            self.run(argv, out)
            self.check_file(out, digest, name + ' > FILE')
            self.remove(out)

        def timed(argv):
            def fn(i):
                r = self.run(argv, out)[:2]
                self.remove(out)
                return r
            return fn
        res = self.interleave([(name, timed(argv)) for name, argv in commands])
        self.add_row('small-pull', 'pull 1 MiB > FILE', res, 3.0,
                     curl_label='curl > FILE')

    def case_small_get_alias(self):
        commands = self.forms('get-alias', self.small_repo, self.alias)
        curl = self.curl_cmd('-H', 'Accept: ' + OCI_MANIFEST,
                             self.url(self.small_repo, 'manifests',
                                      self.alias))
        for name, argv in commands:
            out = self.run(argv)[2].decode().split()
            if out != [self.small_digest]:
                raise BenchError('%s get-alias printed %r, not %s'
                                 % (name, out, self.small_digest))
        manifest = self.run(curl)[2].decode()
        if self.small_digest not in manifest:
            raise BenchError('the manifest does not name %s:\n%s'
                             % (self.small_digest, manifest))
        base = [self.python, '-c', 'pass']

        def base_curl(i):
            """What any Python program making one request must pay at least:
            the interpreter's start, and the request."""
            s1, rss1, _ = self.run(base)
            s2, rss2, _ = self.run(curl)
            return s1 + s2, max(rss1, rss2)
        base_curl(0)      # warm-up
        res = self.interleave([(name, lambda i, a=argv: self.run(a)[:2])
                               for name, argv in commands]
                              + [('curl', lambda i: self.run(curl)[:2]),
                                 ('base-curl', base_curl)])
        self.add_row('small-get-alias', 'get-alias', res, 3.0,
                     curl_label='curl GET manifest')
        self.add_row('small-get-alias', 'get-alias', res, (2.2, 1.6),
                     curl='base-curl',
                     curl_label='python3 -c pass + curl GET manifest')

    def case_startup(self):
        version = self.forms('version')
        helps = [(name + '-help', argv) for name, argv in self.forms('--help')]
        base = [self.python, '-c', 'pass']
        for name, argv in version:
            out = self.run(argv)[2].decode()
            if not out.startswith('dxf.py '):
                raise BenchError('%s version printed %r' % (name, out))
        for name, argv in helps:
            out = self.run(argv)[2].decode()
            if not out.startswith('usage:'):
                raise BenchError('%s --help printed %r' % (name, out[:200]))
        self.run(base)
        res = self.interleave([(name, lambda i, a=argv: self.run(a)[:2])
                               for name, argv in version + helps]
                              + [('base', lambda i: self.run(base)[:2])])
        self.add_row('startup', 'dxf.py version', res, 3.0,
                     curl_label='python3 -c pass', curl='base')
        self.add_row('startup', 'dxf.py --help', res, 3.0,
                     curl_label='python3 -c pass', curl='base',
                     dxf='dxf-help', inst='inst-help')

    # -- wide area -------------------------------------------------------------

    def wan_setup(self):
        """The token registry of the test suite (https, token auth; launched
        by test_dxf.py's _Infra, not a copy of it) behind a ShapingProxy,
        with its token server behind another (the realm the registry
        announces is the shaped one), and python-dxf's CLI in a venv."""
        sys.path.insert(0, os.path.dirname(HERE))
        import test_dxf               # needs pytest importable; runs nothing
        test_dxf.REGISTRY_BINARY = self.args.registry
        rtt, mbit = self.args.wan_rtt / 1000.0, self.args.wan_mbit
        infra = self.wan_infra = test_dxf._Infra(os.path.join(self.tmp, 'wan'))
        log('wan: making the test CA and certificates, starting the token '
            'registry')
        tls = infra.tls_files()
        tokens = infra.token_server()
        token_proxy = ShapingProxy(tokens.host, rtt, mbit)
        tokens.realm = 'https://%s/token' % token_proxy.host
        reg = infra.registry('token')
        proxy = ShapingProxy(reg.host, rtt, mbit, self.args.wan_shared_mbit)
        self.wan_proxies = [proxy, token_proxy]
        env = {k: v for k, v in self.env.items()
               if k not in ('DXF_INSECURE', 'PYTHONPATH')}
        env.update(DXF_HOST=proxy.host, DXF_TLSVERIFY=tls.ca_cert,
                   DXF_USERNAME=test_dxf.TEST_USERNAME,
                   DXF_PASSWORD=test_dxf.TEST_PASSWORD)
        self.wan_env = env
        venv = self.args.python_dxf_venv
        exe = os.path.join(venv, 'bin', 'dxf')
        if not os.access(exe, os.X_OK):
            log('wan: making %s with python-dxf from PyPI' % venv)
            subprocess.run([sys.executable, '-m', 'venv', venv], check=True)
            subprocess.run([os.path.join(venv, 'bin', 'pip'), 'install', '-q',
                            'python-dxf==%s' % PYTHON_DXF_VERSION], check=True)
        self.python_dxf = exe
        return proxy, token_proxy, tokens

    def case_wan(self):
        """Issue 11's tasks through ShapingProxy, for dxf (installed form,
        DXF_CONCURRENCY default) and for python-dxf's CLI, against the
        floor.  See WAN_FLOOR below for what the floor counts."""
        rtt, mbit = self.args.wan_rtt / 1000.0, self.args.wan_mbit
        bw = mbit * 1e6 / 8
        proxy, token_proxy, tokens = self.wan_setup()
        env = self.wan_env
        ours = Runner(self.tmp, dict(env, PYTHONPATH=self.env['PYTHONPATH']))
        theirs = Runner(self.tmp, env)
        n, small = 16, self.args.wan_small_kib * 1024
        big_size = self.args.wan_big_mib * MIB
        files, digests = [], []
        for i in range(n):
            path = os.path.join(self.tmp, 'wan-%02d.bin' % i)
            digests.append(make_blob(path, small))
            files.append(path)
        big = os.path.join(self.tmp, 'wan-big.bin')
        big_digest = make_blob(big, big_size)
        fetch_repo = self.fresh_repo('wan-fetch')
        ours.run(self.inst_cmd('push-blob', fetch_repo, *files) + ['@a'])
        big_repo = self.fresh_repo('wan-big')
        ours.run(self.inst_cmd('push-blob', big_repo, big, '@a'))
        wanted = self.args.wan_tasks or list(WAN_FLOOR)
        ranged_size = self.args.wan_ranged_mib * MIB
        if 'ranged' in wanted:
            ranged = os.path.join(self.tmp, 'wan-ranged.bin')
            ranged_digest = make_blob(ranged, ranged_size)
            ours.run(self.inst_cmd('push-blob', big_repo, ranged))
            os.unlink(ranged)
        starts = [ours.run([self.args.python, '-c', 'pass'])[0] for _ in range(3)]
        python_start = statistics.median(starts)
        pd = self.python_dxf

        def dxf_store():
            return [(ours, self.inst_cmd('push-blob', self.fresh_repo('wan'),
                                         *files) + ['@a'], 'pipe')]

        def pd_store():
            repo = self.fresh_repo('wan-pd')
            return ([(theirs, [pd, 'push-blob', repo, f], 'pipe') for f in files]
                    + [(theirs, [pd, 'set-alias', repo, 'a'] + digests, 'pipe')])

        def dxf_fetch():
            out = tempfile.mkdtemp(dir=self.tmp)
            return [(ours, self.inst_cmd('pull-blob', fetch_repo, '-o', out,
                                         '@a'), 'pipe')]

        def pd_fetch():
            out = tempfile.mkdtemp(dir=self.tmp)
            return ([(theirs, [pd, 'get-alias', fetch_repo, 'a'], 'pipe')] + [
                (theirs, [pd, 'pull-blob', fetch_repo, d],
                 os.path.join(out, '%02d' % i)) for i, d in enumerate(digests)])
        out_big = os.path.join(self.tmp, 'wan-out')
        tasks = [
            ('store', 'store %d x %s under one alias' % (n, size_text(small)),
             dxf_store, pd_store),
            ('fetch', 'fetch them as %d files' % n, dxf_fetch, pd_fetch),
            ('push1', 'store one %s file' % size_text(big_size),
             lambda: [(ours, self.inst_cmd('push-blob', self.fresh_repo('w1'),
                                           big), 'pipe')],
             lambda: [(theirs, [pd, 'push-blob', self.fresh_repo('w1pd'), big],
                       'pipe')]),
            ('pull1', 'fetch it to a file',
             lambda: [(ours, self.inst_cmd('pull-blob', big_repo, '-o', out_big,
                                           big_digest), 'pipe')],
             lambda: [(theirs, [pd, 'pull-blob', big_repo, big_digest],
                       out_big)]),
            ('list', "list an alias's digests",
             lambda: [(ours, self.inst_cmd('get-alias', big_repo, 'a'), 'pipe')],
             lambda: [(theirs, [pd, 'get-alias', big_repo, 'a'], 'pipe')]),
            ('ranged', 'fetch one %s file (ranges)' % size_text(ranged_size),
             lambda: [(ours, self.inst_cmd('pull-blob', big_repo, '-o', out_big,
                                           ranged_digest), 'pipe')],
             lambda: [(theirs, [pd, 'pull-blob', big_repo, ranged_digest],
                       out_big)]),
        ]
        tasks = [t for t in tasks if t[0] in wanted]

        def timed(make):
            """One run: seconds, processes, connections, flights, tokens."""
            commands = make()
            conns = [p.connections for p in self.wan_proxies]
            flights = [p.flights for p in self.wan_proxies]
            del tokens.requests[:]
            total = 0.0
            for runner, argv, out in commands:
                total += runner.run(argv, out)[0]
            return dict(s=total, processes=len(commands),
                        connections=sum(p.connections for p in self.wan_proxies)
                        - sum(conns),
                        flights=sum(p.flights for p in self.wan_proxies)
                        - sum(flights), tokens=len(tokens.requests))
        rows = []
        for key, label, dxf_make, pd_make in tasks:
            log('wan: %s' % label)
            got = {'dxf': [], 'python-dxf': []}
            for i in range(self.args.runs):
                for tool, make in (('dxf', dxf_make), ('python-dxf', pd_make)
                                   )[::1 if i % 2 == 0 else -1]:
                    self.quiesce()
                    got[tool].append(timed(make))
            # The same with the shaper off: what the machine itself costs
            # (Python's start, TLS, the token server signing with openssl).
            for p in self.wan_proxies:
                p.delay, p.rate = 0.0, 1e12
            local = timed(dxf_make)['s']
            for p in self.wan_proxies:
                p.delay, p.rate = rtt / 2.0, bw
            size = {'store': small, 'fetch': small, 'push1': big_size,
                    'pull1': big_size, 'list': 0, 'ranged': ranged_size}[key]
            total = size * (n if key in ('store', 'fetch') else 1)
            trips = WAN_FLOOR[key][0]
            rows.append(dict(key=key, task=label, trips=trips,
                             floor=trips * rtt + total / bw,
                             floor_parallel=trips * rtt + size / bw,
                             target=WAN_TARGETS[key], local=local,
                             start=python_start if key == 'ranged' else 0.0,
                             **got))
        self.wan = dict(rtt_ms=self.args.wan_rtt, mbit=mbit, rows=rows,
                        shared=self.args.wan_shared_mbit, start=python_start)
        for p in self.wan_proxies:
            p.close()
        infra_close = self.wan_infra.close
        self.wan_infra = None
        infra_close()

    def report_wan(self):
        w = sys.stdout.write
        wan = self.wan
        w('\nwide area: ShapingProxy (RTT %g ms, %g Mbit/s per connection) in '
          'front of the registry (https, token auth) and of its token server;\n'
          'dxf installed form, DXF_CONCURRENCY default; python-dxf %s CLI; '
          'runs in seconds, ratio = median / (floor + python3 -c pass); '
          'ranges: (median - python3 -c pass) / floor\n'
          % (wan['rtt_ms'], wan['mbit'], PYTHON_DXF_VERSION))
        w('%-34s %3s %6s | %-16s %5s %6s %6s | %-18s %5s\n' % (
            'task', 'RTT', 'floor', 'dxf runs', 'ratio', 'target', 'RTT 0',
            'python-dxf runs', 'ratio'))
        for r in wan['rows']:
            cells = []
            for tool in ('dxf', 'python-dxf'):
                runs = [x['s'] for x in r[tool]]
                median = statistics.median(runs)
                cells.append(('/'.join('%.2f' % x for x in runs), (
                    (median - wan['start']) / r['floor'] if r['key'] == 'ranged'
                    else median / (r['floor'] + wan['start']))))
            w('%-34s %3d %6.2f | %-16s %5.2f %6.2f %6.2f | %-18s %5.2f\n' % (
                r['task'], r['trips'], r['floor'], cells[0][0], cells[0][1],
                r['target'], r['local'], cells[1][0], cells[1][1]))
        w('RTT 0: one dxf run with the shaper off (no delay, no cap): what '
          'this machine itself costs\n')
        w('all registry connections share %g Mbit/s each way; python3 -c pass '
          'took %.2f s\n'
          % (wan['shared'], wan['start']))
        w('\nwhat each run cost (the last run; flights = client-to-server '
          'turns on all connections, registry and token server):\n')
        w('%-34s %-38s %s\n' % ('task', 'dxf', 'python-dxf'))
        for r in wan['rows']:
            w('%-34s %-38s %s\n' % (r['task'], cost_text(r['dxf'][-1]),
                                    cost_text(r['python-dxf'][-1])))
        w('\nfloor = RTT x the round trips a perfect client cannot avoid + '
          'the bytes over one connection\'s bandwidth:\n')
        for key, (trips, why) in WAN_FLOOR.items():
            w('  %-6s %2d  %s\n' % (key, trips, why))
        w('  The shaper caps each connection, so a client spreading blobs over '
          'k connections\n  can go below it; with every blob on a connection '
          'of its own the floor would be:\n  %s\n' % ', '.join(
              '%s %.2f s' % (r['key'], r['floor_parallel'])
              for r in wan['rows']))

    def context_rss(self):
        """RSS of bare interpreters, for reading the memory figures."""
        out = {}
        for label, argv in (
                ('python3 -c pass', [self.python, '-c', 'pass']),
                ('python3 -S -c pass (no site: no .pth files)',
                 [self.python, '-S', '-c', 'pass']),
                ('python3 -c "import socket, json, hashlib"',
                 [self.python, '-c', 'import socket, json, hashlib']),
                ('curl --version', ['curl', '--version'])):
            out[label] = max(self.run(argv)[1] for _ in range(3))
        return out

    # -- report --------------------------------------------------------------

    def machine(self):
        py = subprocess.run([self.python, '-c',
                             'import sys; print(sys.version.split()[0])'],
                            stdout=subprocess.PIPE).stdout.decode().strip()
        curl = subprocess.run(['curl', '--version'], stdout=subprocess.PIPE
                              ).stdout.decode().splitlines()[0]
        return dict(
            date=datetime.datetime.now().astimezone().isoformat(
                timespec='seconds'),
            host=platform.node(),
            kernel=platform.release(),
            nproc=os.cpu_count(),
            cpu=cpu_model(),
            python='%s (%s)' % (py, self.python),
            dxf=self.dxf,
            registry=self.registry.version(),
            curl=' '.join(curl.split()[:2]),
            rss=self.runner.rss_method(),
            loadavg=first_line('/proc/loadavg'),
            python_env=' '.join('%s=%s' % (k, v) for k, v in sorted(
                self.env.items()) if k.startswith('PYTHON')),
        )

    def report(self, machine, context, elapsed):
        w = sys.stdout.write
        w('dxf.py vs curl  %s\n' % machine['date'])
        w('machine:  %d CPUs, %s, Linux %s\n'
          % (machine['nproc'], machine['cpu'], machine['kernel']))
        w('python:   %s%s\n' % (machine['python'], (
            '  [' + machine['python_env'] + ']') if machine['python_env']
            else ''))
        w('registry: %s   curl: %s\n' % (machine['registry'], machine['curl']))
        w('runs: %d per command, medians in seconds; RSS = largest peak over '
          'the runs (%s)\n' % (self.args.runs, machine['rss']))
        w('load average at start: %s\n\n' % machine['loadavg'])
        w('dxf forms: "script" = python3 dxf.py, "inst" = python3 -m dxf with '
          'compiled bytecode (pip install)\n\n')
        head = ('case', 'script s', 'inst s', 'ref s', 'script/ref',
                'target', 'met', 'inst/ref', 'target', 'met', 'RSS MiB',
                'reference')
        table = []

        def med(values):
            return statistics.median(values) if values else None
        for r in self.rows:
            c = med(r['curl_seconds'])
            cells = []
            for form in ('dxf', 'inst'):
                d = med(r[form + '_seconds'])
                target = r[form + '_target']
                ratio = d / c if d is not None and c else None
                r[form + '_median'] = d
                r[form + '_ratio'] = ratio
                r[form + '_met'] = None if ratio is None else (
                    ratio <= target)
                r[form + '_peak_rss_mib'] = (
                    max(r[form + '_rss_kib']) / 1024.0
                    if r[form + '_rss_kib'] else None)
                text = '-' if ratio is None else '%.2f' % ratio
                if ratio is not None and ratio > target and float(
                        text) <= target:
                    text = '%.3f' % ratio      # 3.004 is not <= 3.00
                if ratio is None:
                    mark = '-'
                elif not r['target_applies']:
                    mark = '(info)'
                else:
                    mark = 'pass' if r[form + '_met'] else 'MISS'
                goal = '<= %.2f' % target
                if not r['target_applies']:
                    goal = '(%s)' % goal
                cells.append(('-' if d is None else '%.3f' % d, text,
                              goal if ratio is not None else '-', mark))
            r['curl_median'] = c
            rss = '/'.join('-' if r[f + '_peak_rss_mib'] is None else
                           '%.1f' % r[f + '_peak_rss_mib']
                           for f in ('dxf', 'inst'))
            table.append((r['label'], cells[0][0], cells[1][0],
                          '-' if c is None else '%.3f' % c)
                         + cells[0][1:] + cells[1][1:]
                         + (rss, r['curl_label']))
        widths = [max(len(str(x[i])) for x in table + [head])
                  for i in range(len(head))]
        align = ['<', '>', '>', '>', '>', '<', '<', '>', '<', '<', '>', '<']
        for line in [head] + table if table else []:
            w('  '.join('{:{}{}}'.format(x, a, wd) for x, a, wd
                        in zip(line, align, widths)).rstrip() + '\n')
        if table:
            w('(ref = the reference named last; RSS: script/inst; (info): '
              'for information, the targets apply to -o\n and to files)\n')
        missed = ['%s vs %s (%s)' % (r['label'], r['curl_label'], what)
                  for r in self.rows if r['target_applies']
                  for f, what in (('dxf', 'script'), ('inst', 'installed'))
                  if r[f + '_met'] is False]
        if missed:
            w('time targets MISSED (%d):\n' % len(missed))
            for m in missed:
                w('  %s\n' % m)
        elif table:
            w('time targets: all met\n')
        big = [r for r in self.rows if r['case'] in ('push-new', 'push-stdin',
                                                     'push-existing', 'pull-file',
                                                     'pull-null')]
        # A row per command run: rows that share a command's samples with
        # an earlier one (another reference for it) are not repeated.
        seen = set()
        rss_rows = []
        for r in self.rows:
            if r['case'] not in ('push-new', 'push-stdin', 'push-existing',
                                 'pull-file', 'pull-null'):
                continue
            key = (r['case'], r['samples']['dxf'], r['samples']['inst'])
            if key not in seen:
                seen.add(key)
                rss_rows.append(r)
        if big:
            w('\npeak RSS on the %s blob (target <= %.0f MiB as a script, '
              '<= %.0f MiB installed), script / inst:\n'
              % (self.big_label, MEMORY_TARGET_MIB['dxf'],
                 MEMORY_TARGET_MIB['inst']))
            for r in rss_rows:
                parts = []
                for f in ('dxf', 'inst'):
                    peak = r[f + '_peak_rss_mib']
                    r[f + '_rss_met'] = (None if peak is None
                                         else peak <= MEMORY_TARGET_MIB[f])
                    parts.append('-' if peak is None else '%5.1f MiB %-4s' % (
                        peak, 'pass' if r[f + '_rss_met'] else 'MISS'))
                w('  %-28s %s\n' % (r['label'], '   '.join(parts)))
        if self.rows:
            parts = []
            for f in ('dxf', 'inst'):
                peaks = [x for r in self.rows for x in r[f + '_rss_kib']]
                if not peaks:
                    parts.append('-')
                    continue
                peak = max(peaks) / 1024.0
                parts.append('%5.1f MiB %-4s' % (
                    peak, 'pass' if peak <= MEMORY_TARGET_MIB[f] else 'MISS'))
            w('peak RSS over every dxf command timed (any size), script / '
              'inst:\n  %-28s %s\n' % ('', '   '.join(parts)))
        if big:
            ncpu = os.cpu_count() or 1
            w('\nCPU seconds (medians) on the %s blob; the registry shares '
              'the %d cores,\nso (client + registry CPU) / %d is a floor on '
              'the wall time:\n' % (self.big_label, ncpu, ncpu))
            lw = max(len('%s (%s)' % (r['label'], r['curl_label']))
                     for r in big)
            w('  %-*s %8s %8s %8s %8s %9s\n' % (
                lw, 'case', 'client', 'registry', 'floor s', 'wall s',
                'floor/ref'))
            done = set()
            for r in big:
                for f, what in (('dxf', 'script'), ('inst', 'inst'),
                                ('curl', r['curl_label'])):
                    key = (r['case'], r['samples'][f])
                    if not r[f + '_cpu'] or key in done or (
                            f == 'curl' and r['case'] in (
                                'push-existing', 'push-stdin')):
                        continue
                    done.add(key)
                    cpu, reg = med(r[f + '_cpu']), med(r[f + '_registry_cpu'])
                    floor = (cpu + reg) / ncpu
                    r[f + '_cpu_floor'] = floor
                    w('  %-*s %8.2f %8.2f %8.2f %8.2f %9.2f\n' % (
                        lw, '%s (%s)' % (r['label'], what), cpu, reg, floor,
                        med(r[f + '_seconds']), floor / r['curl_median']))
        startup = [r for r in self.rows if r['case'] == 'startup']
        small = [r for r in self.rows if r['case'].startswith('small-')
                 and r['samples']['curl'] == 'curl']
        if startup and small:
            base = startup[0]['curl_median']
            w('\npython3 -c pass alone (%.3f s) against the curl side of the '
              '1 MiB cases:\n' % base)
            for r in small:
                w('  %-28s %5.2f x curl\n' % (r['label'],
                                              base / r['curl_median']))
        if context:
            w('\nfor context, peak RSS of:\n')
            for label, kib in context.items():
                w('  %-58s %6.1f MiB\n' % (label, kib / 1024.0))
        if getattr(self, 'wan', None):
            self.report_wan()
        w('\nload average at end: %s\n' % first_line('/proc/loadavg'))
        w('total time: %.0f s\n' % elapsed)
        sys.stdout.flush()

    def main(self):
        started = time.perf_counter()
        self.setup()
        machine = self.machine()
        for case in self.args.cases:
            log('case %s' % case)
            getattr(self, 'case_' + case.replace('-', '_'))()
        context = self.context_rss()
        elapsed = time.perf_counter() - started
        self.report(machine, context, elapsed)
        if self.args.json:
            data = dict(machine=machine, runs=self.args.runs,
                        size_mib=self.args.size_mib, rows=self.rows,
                        context_rss_kib=context, total_seconds=elapsed)
            with open(self.args.json, 'w') as f:
                json.dump(data, f, indent=2)
                f.write('\n')

    def cleanup(self):
        try:
            self.runner.kill_current()
            self.registry.stop()
            if getattr(self, 'wan_infra', None) is not None:
                self.wan_infra.close()
        finally:
            shutil.rmtree(self.tmp, ignore_errors=True)


# -- wide area: a shaping proxy on loopback -----------------------------------

class ShapingProxy:
    """A TCP proxy on 127.0.0.1 in front of ``upstream`` (host:port) that
    makes loopback look like a wide-area link: every chunk is delivered
    ``rtt / 2`` after it was sent, and each connection carries at most
    ``mbit`` Mbit/s each way (a chunk leaves only once the previous ones
    have had their time on the wire).  At most 4 MiB wait in each
    direction, as a TCP window would allow.  The TCP handshake costs its
    round trip: what the client sends first is read only ``rtt`` after the
    connection was accepted (loopback's connect() returns at once).  TLS
    passes through untouched.  ``connections`` counts the connections
    accepted, ``flights`` the times a client started sending after having
    last heard from the server (or at the start): its round trips, summed
    over all connections."""

    CHUNK = 64 << 10

    def __init__(self, upstream, rtt, mbit, shared_mbit=None):
        import queue
        self.queue_module = queue
        self.upstream = upstream
        self.delay = rtt / 2.0
        self.rate = mbit * 1e6 / 8.0
        # One bottleneck all connections share, each way (a site's uplink):
        # a chunk leaves once its connection and the shared link are free.
        self.shared = shared_mbit * 1e6 / 8.0 if shared_mbit else None
        self.links = {'client': [0.0], 'server': [0.0]}
        self.connections = 0
        self.flights = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.bind(('127.0.0.1', 0))
        self.sock.listen(128)
        self.host = '127.0.0.1:%d' % self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self.accept, daemon=True)
        self.thread.start()

    def accept(self):
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            host, port = self.upstream.rsplit(':', 1)
            server = socket.create_connection((host, int(port)))
            for s in (client, server):
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            turn = ['server']
            self.pipe(client, server, 2 * self.delay, turn, 'client')
            self.pipe(server, client, 0.0, turn, 'server')

    def pipe(self, src, dst, first_wait, turn, side):
        q = self.queue_module.Queue(maxsize=(4 << 20) // self.CHUNK)
        wire = [0.0]      # when the link is free again

        def read():
            time.sleep(first_wait)     # the SYN, SYN-ACK round trip
            while True:
                try:
                    data = src.recv(self.CHUNK)
                except OSError:
                    data = b''
                now = time.perf_counter()
                if data and turn[0] != side:
                    turn[0] = side
                    if side == 'client':
                        with self.lock:
                            self.flights += 1
                wire[0] = max(now, wire[0]) + len(data) / self.rate
                if self.shared:
                    with self.lock:
                        link = self.links[side]
                        link[0] = max(now, link[0]) + len(data) / self.shared
                        wire[0] = max(wire[0], link[0])
                q.put((wire[0] + self.delay, data))
                if not data:
                    return

        def write():
            while True:
                at, data = q.get()
                wait = at - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                if not data:
                    try:
                        dst.shutdown(socket.SHUT_WR)
                    except OSError:
                        pass
                    return
                try:
                    dst.sendall(data)
                except OSError:
                    return
        threading.Thread(target=read, daemon=True).start()
        threading.Thread(target=write, daemon=True).start()

    def close(self):
        self.sock.close()


def parse_args(argv):
    p = argparse.ArgumentParser(
        description='Benchmark dxf.py against curl on a local registry.',
        epilog='cases: ' + ', '.join(CASES))
    p.add_argument('--runs', type=int, default=5,
                   help='timed runs per command (default 5)')
    p.add_argument('--size-mib', type=int, default=1024,
                   help='size of the big blob in MiB (default 1024)')
    p.add_argument('--cases', default=','.join(CASES),
                   help='comma-separated subset of: ' + ', '.join(CASES))
    p.add_argument('--json', metavar='PATH', help='also write results here')
    p.add_argument('--python', default=os.path.realpath(sys.executable),
                   help='interpreter to run dxf.py with (default: %(default)s)')
    p.add_argument('--dxf', default=os.path.join(os.path.dirname(HERE),
                                                 'dxf.py'),
                   help='dxf.py to run (default: %(default)s)')
    p.add_argument('--registry', default=shutil.which('docker-registry')
                   or '/usr/bin/docker-registry',
                   help='registry binary (default: %(default)s)')
    p.add_argument('--wan-rtt', type=float, default=50.0,
                   help='wan case: round-trip time in ms (default 50)')
    p.add_argument('--wan-mbit', type=float, default=200.0,
                   help='wan case: Mbit/s per connection (default 200)')
    p.add_argument('--wan-small-kib', type=int, default=1024,
                   help='wan case: size of each of the 16 files (default 1024)')
    p.add_argument('--wan-big-mib', type=int, default=64,
                   help='wan case: size of the one big file (default 64)')
    p.add_argument('--wan-ranged-mib', type=int, default=256,
                   help='wan case: the blob fetched in ranges (default 256)')
    p.add_argument('--wan-shared-mbit', type=float, default=1000.0,
                   help='wan case: the bottleneck all connections share')
    p.add_argument('--wan-tasks', type=lambda v: v.split(','), default=None,
                   help='wan case: some of ' + ', '.join(WAN_FLOOR))
    p.add_argument('--python-dxf-venv', default=os.path.join(
        os.path.dirname(HERE), '.venv-bench'),
                   help='wan case: venv with python-dxf %s, made if missing '
                   '(default: %%(default)s)' % PYTHON_DXF_VERSION)
    p.add_argument('--tmpdir', default=None,
                   help='where to put blobs and registry storage')
    args = p.parse_args(argv)
    args.cases = [c.strip() for c in args.cases.split(',') if c.strip()]
    bad = [c for c in args.cases if c not in CASES]
    if bad:
        p.error('unknown case(s) %s; choose from %s'
                % (', '.join(bad), ', '.join(CASES)))
    if args.runs < 1 or args.size_mib < 1:
        p.error('--runs and --size-mib must be positive')
    for tool in ('curl',):
        if not shutil.which(tool):
            p.error('%s is not installed' % tool)
    if not os.access(args.registry, os.X_OK):
        p.error('no registry binary at %s' % args.registry)
    args.dxf = os.path.abspath(args.dxf)
    if not os.path.isfile(args.dxf):
        p.error('no dxf.py at %s' % args.dxf)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def on_term(signum, frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_term)
    bench = Bench(args)
    try:
        bench.main()
    except BenchError as exc:
        sys.stderr.write('bench: error: %s\n' % exc)
        return 1
    except KeyboardInterrupt:
        sys.stderr.write('bench: interrupted\n')
        return 130
    finally:
        bench.cleanup()
    return 0


if __name__ == '__main__':
    sys.exit(main())
