"""Tests for dxf.py.

How to run
    make test                       every interpreter found (see the Makefile)
    python3 -m pytest -q            this interpreter only
    python3 -m pytest -q -m "not slow"

What the tests need
    * ``docker-registry`` (the distribution 2.8 binary, Debian package
      ``docker-registry``).  It is run as a plain child process, once per
      mode per session, on 127.0.0.1 and a free port.  ``DXF_TEST_REGISTRY``
      names another binary.  When it is missing the registry tests are
      skipped, unless the ``CI`` variable is set: then they fail, because a
      green run that skipped the registry proves nothing.
    * ``openssl`` (the command line tool): the test CA, the server
      certificate and the token-signing certificate are made with it, and
      the test token server signs its RS256 JWTs with ``openssl dgst``.
    * pytest; nothing else outside the standard library.

Registries (fixture ``registries``, one per mode, started on first use)
    open    plain http, no auth                 (``insecure`` is True)
    basic   https + htpasswd, user fred         (``tlsverify`` = CA bundle)
    token   https + token auth, realm = the test TokenServer
    tls     https, no auth

The test user is ``fred``, password ``TEST_PASSWORD`` below.  Everything
listens on 127.0.0.1; nothing leaves the machine.  When a test fails, the
new lines of each running registry's log are added to its report.

Fixtures
    tls_files       session   TLSFiles: ca_cert (pass as tlsverify=), server and
                              token-signing certificates and keys
    registries      session   mapping mode -> RegistryProcess, started on first use
    registry_for    function  registries.__getitem__
    token_server    function  the session's TokenServer, its knobs reset around the test
    paging_proxy    function  the session's PagingProxy (pages tags/list and _catalog
                              in front of the open registry), reset around the test
    repo            function  a repository name unique to the test
    clean_env       autouse   strips DXF_*, *_PROXY, SSL_CERT_*, DOCKER_CONFIG
    cli_env         function  mode -> environ dict for the CLI
    run_cli         function  (argv, env, stdin=b'') -> (status, stdout bytes, stderr text)

Environment
    DXF_TEST_REGISTRY   the registry binary (default: docker-registry on PATH)
    CI                  when set (and not 0/false), missing infrastructure fails

Markers (registered in tox.ini, ``--strict-markers``)
    registry    needs the registry process
    tls         needs openssl and an https registry
    slow        multi-MiB streams; deselect with ``-m "not slow"``
"""
import base64
import collections
import hashlib
import http.client
import http.server
import io
import itertools
import json
import os
import random
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

from collections.abc import Mapping

import pytest

# =============================================================================
# 1. Infrastructure
#    Certificates, the token server, the registry processes, the paging proxy.
# =============================================================================

# Read once at import: the autouse ``clean_env`` fixture strips DXF_* from
# os.environ for every test, and registries start lazily inside tests.
REGISTRY_OVERRIDE = os.environ.get('DXF_TEST_REGISTRY')
REGISTRY_BINARY = shutil.which(REGISTRY_OVERRIDE or 'docker-registry')
IN_CI = os.environ.get('CI', '').strip().lower() not in ('', '0', 'false', 'no')

TEST_USERNAME = 'fred'
TEST_PASSWORD = 'dxf-test-password'
# One bcrypt line (cost 4) for fred / TEST_PASSWORD.  Generated once with
#   python3 -m venv /tmp/bcv && /tmp/bcv/bin/pip install bcrypt
#   /tmp/bcv/bin/python -c "import bcrypt; print(bcrypt.hashpw(
#       b'dxf-test-password', bcrypt.gensalt(rounds=4)).decode())"
# (bcrypt 5.0.0).  The registry reads bcrypt lines only; cost 4 keeps each
# request cheap, since it checks the hash on every request.
HTPASSWD_LINE = 'fred:$2b$04$S0uJGfWBIjyqRvs3tWT9O.deGMgmSj4HoExnsxgWoGWBX3nggQhc6'

TOKEN_SERVICE = 'dxf-test-registry'
TOKEN_ISSUER = 'dxf-test-token-issuer'

MODES = ('open', 'basic', 'token', 'tls')

REPO_RE = re.compile(r'^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*'
                     r'(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$')


def _unavailable(reason):
    """Skip locally, fail under CI: missing infrastructure is a CI failure."""
    if IN_CI:
        pytest.fail(reason + ' (CI is set, so this is a failure)', pytrace=False)
    pytest.skip(reason)


def _free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]
    finally:
        sock.close()


def _wait_until(predicate, timeout=10.0, what=None):
    """Poll ``predicate`` until it returns something true; return that.

    The poll interval starts at 2 ms and doubles up to 100 ms.  Raises
    AssertionError when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError('timed out after %.1fs waiting for %s'
                                 % (timeout, what or predicate))
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _blob(size, seed=0):
    """``size`` deterministic pseudo-random bytes; the same seed gives the same bytes."""
    if size <= 0:
        return b''
    return random.Random(seed).getrandbits(8 * size).to_bytes(size, 'little')


def _sha256(data):
    return 'sha256:' + hashlib.sha256(data).hexdigest()


def _run(argv, input=None):
    """Run a command; return its stdout; raise RuntimeError with its stderr."""
    stdin = subprocess.DEVNULL if input is None else subprocess.PIPE
    proc = subprocess.Popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(input)
    if proc.returncode != 0:
        raise RuntimeError('%s failed (%d): %s' % (' '.join(argv), proc.returncode,
                                                   err.decode('utf-8', 'replace').strip()))
    return out


# ---- certificates -----------------------------------------------------------

TLSFiles = collections.namedtuple('TLSFiles', [
    'dir',
    'ca_cert',       # the test CA (PEM): the bundle to pass as tlsverify=
    'ca_key',
    'server_cert',   # 127.0.0.1 / localhost, issued by the test CA
    'server_key',
    'signing_cert',  # self-signed, keyUsage digitalSignature: the registry's rootcertbundle
    'signing_key',   # RSA: the token server signs RS256 JWTs with it
])

_OPENSSL_CNF = """\
[req]
distinguished_name = dn
prompt = no

[dn]
CN = dxf test

[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always

[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
subjectAltName = IP:127.0.0.1, DNS:localhost

[v3_signing]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid:always
"""


def _serial():
    return '0x' + (bytes([os.urandom(1)[0] & 0x7f | 0x01]) + os.urandom(15)).hex()


def _make_tls_files(directory):
    """Make a test CA, a server certificate and a token-signing certificate.

    All with the ``openssl`` command line tool, RFC 5280-clean so that
    Python 3.13's VERIFY_X509_STRICT accepts them.  Returns a TLSFiles.
    """
    openssl = shutil.which('openssl')
    if not openssl:
        _unavailable('openssl is not installed')

    def p(name):
        return os.path.join(directory, name)
    files = TLSFiles(directory, p('ca.pem'), p('ca.key'), p('server.pem'), p('server.key'),
                     p('signing.pem'), p('signing.key'))
    cnf = p('openssl.cnf')
    with open(cnf, 'w') as f:
        f.write(_OPENSSL_CNF)
    # The two RSA keys take most of the time: make them side by side.
    keygens = [subprocess.Popen([openssl, 'genpkey', '-algorithm', 'RSA',
                                 '-pkeyopt', 'rsa_keygen_bits:2048', '-out', key],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
               for key in (files.server_key, files.signing_key)]
    _run([openssl, 'genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256',
          '-out', files.ca_key])
    _run([openssl, 'req', '-new', '-x509', '-config', cnf, '-extensions', 'v3_ca',
          '-key', files.ca_key, '-subj', '/CN=dxf test CA', '-days', '30', '-sha256',
          '-set_serial', _serial(), '-out', files.ca_cert])
    for proc in keygens:
        err = proc.communicate()[1]
        if proc.returncode != 0:
            raise RuntimeError('openssl genpkey failed: %s' % err.decode('utf-8', 'replace'))
    csr = p('server.csr')
    _run([openssl, 'req', '-new', '-config', cnf, '-key', files.server_key,
          '-subj', '/CN=127.0.0.1', '-out', csr])
    _run([openssl, 'x509', '-req', '-in', csr, '-CA', files.ca_cert, '-CAkey', files.ca_key,
          '-set_serial', _serial(), '-days', '30', '-sha256',
          '-extfile', cnf, '-extensions', 'v3_server', '-out', files.server_cert])
    _run([openssl, 'req', '-new', '-x509', '-config', cnf, '-extensions', 'v3_signing',
          '-key', files.signing_key, '-subj', '/CN=dxf test token signer', '-days', '30',
          '-sha256', '-set_serial', _serial(), '-out', files.signing_cert])
    return files


def _client_context(cafile):
    """An SSL client context trusting only ``cafile``, strict on every Python."""
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.verify_flags |= getattr(ssl, 'VERIFY_X509_STRICT', 0)
    return ctx


# ---- small threaded HTTP servers --------------------------------------------

class _Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    """A threaded HTTPServer on 127.0.0.1, optionally TLS, quiet on errors.

    TLS handshakes happen in the per-connection thread, so a client that
    never finishes one cannot stall the accept loop.
    """
    daemon_threads = True
    ssl_context = None

    def __init__(self, handler, owner, ssl_context=None):
        self.owner = owner
        self.ssl_context = ssl_context
        self.errors = []
        http.server.HTTPServer.__init__(self, ('127.0.0.1', 0), handler)

    def server_bind(self):
        # HTTPServer.server_bind would call socket.getfqdn(): skip the lookup.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        if self.ssl_context is None:
            return http.server.HTTPServer.finish_request(self, request, client_address)
        request.settimeout(10)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ValueError):
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            conn.close()

    def handle_error(self, request, client_address):
        self.errors.append(sys.exc_info()[1])


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    timeout = 30

    def log_message(self, format, *args):
        pass

    def _reply(self, status, body=b'', headers=()):
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode('utf-8')
            headers = [('Content-Type', 'application/json')] + list(headers)
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if self.command != 'HEAD':
            self.wfile.write(body)


class _ServerThread(object):
    """Runs a _Server in a daemon thread; ``stop()`` closes the listening socket."""

    def __init__(self, handler, owner, ssl_context=None):
        self.server = _Server(handler, owner, ssl_context)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever,
                                       kwargs={'poll_interval': 0.05},
                                       name='%s-%d' % (type(owner).__name__, self.port))
        self.thread.daemon = True
        self.thread.start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# ---- the token server ---------------------------------------------------------

def _b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b'=').decode('ascii')


def _parse_scope(scope):
    """'repository:a/b:pull,push' -> ('repository', 'a/b', ['pull', 'push'])."""
    rtype, sep, rest = scope.partition(':')
    name, sep2, actions = rest.rpartition(':')
    if not sep or not sep2 or not rtype or not name:
        return None
    return rtype, name, [a for a in actions.split(',') if a]


class _TokenHandler(_Handler):

    def do_GET(self):
        ts = self.server.owner
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query, keep_blank_values=True)
        auth = self.headers.get('Authorization')
        username = password = None
        if auth and auth[:6].lower() == 'basic ':
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode('utf-8')
                username, _, password = decoded.partition(':')
            except (ValueError, UnicodeDecodeError):
                username = password = None
        scopes = [s for value in query.get('scope', []) for s in value.split(' ') if s]
        ts.requests.append({'method': 'GET', 'path': url.path, 'query': query,
                            'authorization': auth is not None, 'username': username,
                            'scopes': scopes})
        if url.path != '/token':
            return self._reply(404, {'errors': [{'code': 'NOT_FOUND', 'message': url.path}]})
        challenge = [('WWW-Authenticate', 'Basic realm="dxf-test-token-server"')]
        if ts.refuse_all:
            return self._reply(401, {'errors': [{'code': 'UNAUTHORIZED',
                                                 'message': 'refusing every request'}]},
                               challenge)
        if auth is not None and (username, password) != (ts.username, ts.password):
            return self._reply(401, {'errors': [{'code': 'UNAUTHORIZED',
                                                 'message': 'incorrect username or password'}]},
                               challenge)
        access = []
        for scope in scopes:
            parsed = _parse_scope(scope)
            if parsed is None:
                return self._reply(400, {'errors': [{'code': 'INVALID_SCOPE', 'message': scope}]})
            rtype, name, actions = parsed
            if auth is None:
                actions = ['pull'] if rtype == 'repository' and 'pull' in actions else []
            granted = []
            for action in actions:
                if action not in granted:
                    granted.append(action)
            if granted:
                access.append({'type': rtype, 'name': name, 'actions': granted})
        service = query.get('service', [ts.service])[0]
        token = ts.issue(username if auth is not None else '', access, audience=service)
        now = time.time()
        answer = {'expires_in': ts.expires_in,
                  'issued_at': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(now))}
        if ts.answer_access_token_only:
            answer['access_token'] = token
        elif ts.empty_access_token:
            answer.update(token=token, access_token='')
        else:
            answer.update(token=token, access_token=token)
        return self._reply(200, answer)

    def do_POST(self):
        self.close_connection = True
        self.server.owner.requests.append({'method': 'POST', 'path': self.path, 'query': {},
                                           'authorization': 'Authorization' in self.headers,
                                           'username': None, 'scopes': []})
        self._reply(405, {'errors': [{'code': 'UNSUPPORTED', 'message': 'GET only'}]},
                    [('Connection', 'close')])


class TokenServer(object):
    """A Docker token server over HTTPS on 127.0.0.1 (see the auth spec).

    ``GET /token?service=S&scope=A&scope=B`` (scopes may also be
    space-separated in one parameter).  Basic credentials for ``fred`` and
    the test password get every action asked for; a wrong password gets
    401; no credentials get ``pull`` on repositories and nothing else.

    Knobs a test can set (``reset()`` puts them back and clears
    ``requests``; the ``token_server`` fixture calls it around each test):

    ``expires_in``               the ``expires_in`` answered (default 300)
    ``token_lifetime``           seconds from now to the JWT's ``exp``
                                 (None: same as ``expires_in``); the
                                 registry allows 60 s of leeway, so an
                                 already-expired token needs -120 or so
    ``answer_access_token_only`` answer ``access_token`` but no ``token``
    ``empty_access_token``       answer ``"access_token": ""`` plus ``token``
                                 (Harbor does that)
    ``refuse_all``               401 for every request, fred's too

    ``requests`` lists every request as a dict: method, path, query (dict
    of lists), authorization (bool), username (None when absent), scopes.
    """

    def __init__(self, tls_files, service=TOKEN_SERVICE, issuer=TOKEN_ISSUER):
        self.tls_files = tls_files
        self.service = service
        self.issuer = issuer
        self.username = TEST_USERNAME
        self.password = TEST_PASSWORD
        self.cafile = tls_files.ca_cert
        with open(tls_files.signing_cert) as f:
            der = ssl.PEM_cert_to_DER_cert(f.read())
        self._header = _b64url(json.dumps({
            'alg': 'RS256', 'typ': 'JWT',
            'x5c': [base64.b64encode(der).decode('ascii')]}).encode('utf-8'))
        self.requests = []
        self.reset()
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tls_files.server_cert, tls_files.server_key)
        self._thread = _ServerThread(_TokenHandler, self, ctx)
        self.port = self._thread.port
        self.host = '127.0.0.1:%d' % self.port
        self.url = 'https://' + self.host
        self.realm = self.url + '/token'

    def reset(self):
        self.expires_in = 300
        self.token_lifetime = None
        self.answer_access_token_only = False
        self.empty_access_token = False
        self.refuse_all = False
        del self.requests[:]

    def issue(self, subject, access, audience=None, lifetime=None):
        """A signed JWT the registry accepts; ``access`` as in the token's claim."""
        now = int(time.time())
        if lifetime is None:
            lifetime = self.token_lifetime if self.token_lifetime is not None else self.expires_in
        claims = {'iss': self.issuer, 'sub': subject, 'aud': audience or self.service,
                  'exp': now + int(lifetime), 'nbf': now - 10, 'iat': now,
                  'jti': base64.b32encode(os.urandom(10)).decode('ascii').lower(),
                  'access': access}
        signing_input = self._header + '.' + _b64url(json.dumps(claims).encode('utf-8'))
        signature = _run(['openssl', 'dgst', '-sha256', '-sign', self.tls_files.signing_key],
                         input=signing_input.encode('ascii'))
        return signing_input + '.' + _b64url(signature)

    def stop(self):
        self._thread.stop()


# ---- the registry process -----------------------------------------------------

class RegistryProcess(object):
    """``docker-registry serve config.yml`` as a child process.

    ``mode`` is one of 'open' (http, no auth), 'basic' (https + htpasswd),
    'token' (https + token auth against ``token_server``) and 'tls' (https,
    no auth).  Attributes: ``mode``, ``host`` ('127.0.0.1:PORT'), ``url``,
    ``insecure`` (True for open), ``tlsverify`` (the CA bundle for https
    modes, True otherwise), ``username``/``password`` (None for open/tls),
    ``storage`` (the filesystem driver's root), ``log`` (its output),
    ``config``.
    """

    def __init__(self, mode, workdir, binary, tls_files=None, token_server=None):
        if mode not in MODES:
            raise ValueError('unknown registry mode %r' % mode)
        self.mode = mode
        self.workdir = workdir
        self.binary = binary
        self.tls_files = tls_files
        self.token_server = token_server
        self.https = mode != 'open'
        self.insecure = not self.https
        self.tlsverify = tls_files.ca_cert if self.https else True
        if mode in ('basic', 'token'):
            self.username, self.password = TEST_USERNAME, TEST_PASSWORD
        else:
            self.username = self.password = None
        self.storage = os.path.join(workdir, 'storage')
        self.config = os.path.join(workdir, 'config.yml')
        self.log = os.path.join(workdir, 'registry.log')
        self.proc = None
        self._logfile = None
        self.host = self.url = None

    def _write_config(self, port):
        q = json.dumps  # a JSON string is a valid YAML scalar
        lines = [
            'version: 0.1',
            'log:',
            '  level: warn',
            '  formatter: text',
            '  accesslog:',
            '    disabled: true',
            'storage:',
            '  filesystem:',
            '    rootdirectory: %s' % q(self.storage),
            '  delete:',
            '    enabled: true',
            '  maintenance:',
            '    uploadpurging:',
            '      enabled: false',
            'http:',
            '  addr: 127.0.0.1:%d' % port,
            '  secret: dxf-test-secret',
            '  headers:',
            '    X-Content-Type-Options: [nosniff]',
        ]
        if self.https:
            lines += ['  tls:',
                      '    certificate: %s' % q(self.tls_files.server_cert),
                      '    key: %s' % q(self.tls_files.server_key)]
        if self.mode == 'basic':
            htpasswd = os.path.join(self.workdir, 'htpasswd')
            with open(htpasswd, 'w') as f:
                f.write(HTPASSWD_LINE + '\n')
            lines += ['auth:',
                      '  htpasswd:',
                      '    realm: dxf-test-basic',
                      '    path: %s' % q(htpasswd)]
        elif self.mode == 'token':
            ts = self.token_server
            lines += ['auth:',
                      '  token:',
                      '    realm: %s' % q(ts.realm),
                      '    service: %s' % q(ts.service),
                      '    issuer: %s' % q(ts.issuer),
                      '    rootcertbundle: %s' % q(self.tls_files.signing_cert)]
        with open(self.config, 'w') as f:
            f.write('\n'.join(lines) + '\n')

    def _answers(self):
        if self.proc.poll() is not None:
            return 'exited'
        if self.https:
            conn = http.client.HTTPSConnection(self.host, timeout=2,
                                               context=_client_context(self.tlsverify))
        else:
            conn = http.client.HTTPConnection(self.host, timeout=2)
        try:
            conn.request('GET', '/v2/')
            conn.getresponse().read()
            return 'up'
        except (OSError, http.client.HTTPException):
            return None
        finally:
            conn.close()

    def start(self):
        os.makedirs(self.storage, exist_ok=True)
        for attempt in range(3):
            port = _free_port()
            self.host = '127.0.0.1:%d' % port
            self.url = ('https://' if self.https else 'http://') + self.host
            self._write_config(port)
            self._logfile = open(self.log, 'ab')
            self.proc = subprocess.Popen(
                [self.binary, 'serve', self.config], stdin=subprocess.DEVNULL,
                stdout=self._logfile, stderr=subprocess.STDOUT, cwd=self.workdir,
                env={'PATH': os.environ.get('PATH', ''), 'HOME': self.workdir})
            state = _wait_until(self._answers, 15,
                                'the %s registry on %s' % (self.mode, self.host))
            if state == 'up':
                return self
            self.proc.wait()
            self._logfile.close()
            text = self.log_text()
            if 'address already in use' not in text or attempt == 2:
                raise RuntimeError('the %s registry exited with status %s:\n%s'
                                   % (self.mode, self.proc.returncode, text[-4000:]))

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._logfile is not None:
            self._logfile.close()

    def log_text(self, offset=0):
        try:
            with open(self.log, 'rb') as f:
                f.seek(offset)
                return f.read().decode('utf-8', 'replace')
        except OSError:
            return ''

    def log_size(self):
        try:
            return os.path.getsize(self.log)
        except OSError:
            return 0

    def blob_path(self, digest):
        """Where the filesystem driver keeps a blob's bytes (to corrupt it on disk)."""
        algo, _, hexdigest = digest.partition(':')
        return os.path.join(self.storage, 'docker', 'registry', 'v2', 'blobs', algo,
                            hexdigest[:2], hexdigest, 'data')

    def __repr__(self):
        return '<RegistryProcess %s %s>' % (self.mode, self.url)


# ---- the paging proxy -----------------------------------------------------------

_HOP_BY_HOP = frozenset(['connection', 'keep-alive', 'proxy-connection', 'te', 'trailer',
                         'trailers', 'transfer-encoding', 'upgrade', 'expect'])
_TAGS_RE = re.compile(r'^/v2/(.+)/tags/list$')
_LINK_NEXT_RE = re.compile(r'<([^>]*)>\s*;\s*rel="?next"?')


class _ProxyHandler(_Handler):

    def _read_chunked(self):
        while True:
            line = self.rfile.readline(65537)
            if not line:
                raise ConnectionError('client closed mid-body')
            size = int(line.split(b';', 1)[0].strip(), 16)
            if size == 0:
                while self.rfile.readline(65537) not in (b'\r\n', b'\n', b''):
                    pass
                return
            while size:
                data = self.rfile.read(min(size, 65536))
                if not data:
                    raise ConnectionError('client closed mid-chunk')
                size -= len(data)
                yield data
            self.rfile.readline(3)

    def _read_length(self, length):
        while length:
            data = self.rfile.read(min(length, 65536))
            if not data:
                raise ConnectionError('client closed mid-body')
            length -= len(data)
            yield data

    def _upstream(self):
        return http.client.HTTPConnection(self.server.owner.upstream, timeout=30)

    def _proxy(self):
        proxy = self.server.owner
        proxy.requests.append(self.path)
        url = urllib.parse.urlsplit(self.path)
        if self.command == 'GET' and (url.path == '/v2/_catalog' or _TAGS_RE.match(url.path)):
            return self._paged(url)
        headers = {}
        chunked = 'chunked' in self.headers.get('Transfer-Encoding', '').lower()
        for name, value in self.headers.items():
            if name.lower() in _HOP_BY_HOP or (chunked and name.lower() == 'content-length'):
                continue
            headers[name] = value
        if chunked:
            body = self._read_chunked()
        elif self.headers.get('Content-Length'):
            body = self._read_length(int(self.headers['Content-Length']))
        else:
            body = None
        conn = self._upstream()
        try:
            try:
                if chunked:
                    conn.request(self.command, self.path, body=body, headers=headers,
                                 encode_chunked=True)
                else:
                    conn.request(self.command, self.path, body=body, headers=headers)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                self.close_connection = True
                return self._reply(502, str(e).encode('utf-8'), [('Connection', 'close')])
            self.send_response_only(resp.status, resp.reason)
            length = resp.getheader('Content-Length')
            for name, value in resp.getheaders():
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            no_body = self.command == 'HEAD' or resp.status in (204, 304) or resp.status < 200
            if no_body or length is not None:
                self.end_headers()
                if not no_body:
                    while True:
                        data = resp.read(65536)
                        if not data:
                            break
                        self.wfile.write(data)
            else:
                self.send_header('Transfer-Encoding', 'chunked')
                self.end_headers()
                while True:
                    data = resp.read(65536)
                    if not data:
                        break
                    self.wfile.write(b'%x\r\n%s\r\n' % (len(data), data))
                self.wfile.write(b'0\r\n\r\n')
        finally:
            conn.close()

    def _fetch_all(self, path, key):
        """GET every page of a list from the registry: (status, headers, body, items)."""
        items = []
        headers = {}
        if self.headers.get('Authorization'):
            headers['Authorization'] = self.headers['Authorization']
        while True:
            conn = self._upstream()
            try:
                conn.request('GET', path, headers=headers)
                resp = conn.getresponse()
                body = resp.read()
            finally:
                conn.close()
            if resp.status != 200:
                return resp.status, resp.getheaders(), body, None
            items.extend(json.loads(body.decode('utf-8')).get(key) or [])
            match = _LINK_NEXT_RE.search(resp.getheader('Link') or '')
            if not match:
                return resp.status, resp.getheaders(), body, items
            path = match.group(1)

    def _paged(self, url):
        proxy = self.server.owner
        query = urllib.parse.parse_qs(url.query)
        try:
            n = int(query['n'][0]) if 'n' in query else proxy.page_size
            if n < 0:
                raise ValueError(n)
        except ValueError:
            return self._reply(400, {'errors': [{'code': 'PAGINATION_NUMBER_INVALID',
                                                 'message': 'invalid n'}]})
        last = query.get('last', [None])[0]
        tags = _TAGS_RE.match(url.path)
        key = 'tags' if tags else 'repositories'
        upstream_path = url.path + ('' if tags else '?n=1000')
        status, headers, body, items = self._fetch_all(upstream_path, key)
        if items is None:
            keep = [(k, v) for k, v in headers if k.lower() not in _HOP_BY_HOP
                    and k.lower() != 'content-length']
            return self._reply(status, body, keep)
        items = sorted(items)
        if last is not None:
            items = [x for x in items if x > last]
        page = items[:n]
        answer = {'name': tags.group(1), 'tags': page} if tags else {'repositories': page}
        extra = [('Docker-Distribution-Api-Version', 'registry/2.0')]
        if page and len(items) > len(page):
            extra.append(('Link', '<%s?%s>; rel="next"' % (
                url.path, urllib.parse.urlencode([('n', n), ('last', page[-1])]))))
        return self._reply(200, answer, extra)

    do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _proxy


class PagingProxy(object):
    """A reverse proxy in front of a plain-http registry that pages lists.

    Everything goes through unchanged (method, path, headers with ``Host``,
    bodies, chunked uploads), so upload ``Location`` URLs lead back through
    the proxy.  ``GET /v2/<name>/tags/list`` and ``GET /v2/_catalog`` are
    answered from the full list in pages of ``n`` (default ``page_size``)
    after ``last``, with ``Link: <...>; rel="next"`` while more remain.
    ``requests`` lists the path (with query) of every request served.
    """

    def __init__(self, upstream_host, page_size=2):
        self.upstream = upstream_host
        self.page_size = page_size
        self.requests = []
        self._thread = _ServerThread(_ProxyHandler, self)
        self.port = self._thread.port
        self.host = '127.0.0.1:%d' % self.port
        self.url = 'http://' + self.host

    def reset(self):
        self.page_size = 2
        del self.requests[:]

    def stop(self):
        self._thread.stop()


# ---- the session's infrastructure, started lazily -----------------------------

class _LogReporter(object):
    """A pytest plugin: adds the registries' new log lines to a failing test's report."""

    def __init__(self, infra):
        self.infra = infra
        self.offsets = {}

    def pytest_runtest_logstart(self, nodeid, location):
        self.offsets = dict((mode, reg.log_size()) for mode, reg in self.infra.started.items())

    def pytest_runtest_logreport(self, report):
        if not report.failed:
            return
        for mode, reg in sorted(self.infra.started.items()):
            text = reg.log_text(self.offsets.get(mode, 0)).strip()
            if text:
                report.sections.append(('registry log (%s, %s)' % (mode, reg.log),
                                        text[-8000:]))


class _Infra(object):
    """Owns every server of the session; starts each on first use."""

    def __init__(self, basedir):
        self.basedir = basedir
        self.started = {}  # mode -> RegistryProcess
        self._tls = self._token = self._proxy = None
        self._failed = {}  # what -> reason, so a missing binary is reported once, fast

    def _dir(self, name):
        path = os.path.join(self.basedir, name)
        os.makedirs(path, exist_ok=True)
        return path

    def tls_files(self):
        if self._tls is None:
            self._tls = _make_tls_files(self._dir('tls'))
        return self._tls

    def token_server(self):
        if self._token is None:
            self._token = TokenServer(self.tls_files())
        return self._token

    def registry(self, mode):
        if mode in self.started:
            return self.started[mode]
        if mode not in MODES:
            raise KeyError(mode)
        if mode in self._failed:
            _unavailable(self._failed[mode])
        if not REGISTRY_BINARY:
            if REGISTRY_OVERRIDE:
                reason = 'DXF_TEST_REGISTRY=%s is not an executable' % REGISTRY_OVERRIDE
            else:
                reason = ('docker-registry not found (install the Debian package '
                          'docker-registry or set DXF_TEST_REGISTRY)')
            self._failed[mode] = reason
            _unavailable(reason)
        tls = self.tls_files() if mode != 'open' else None
        token = self.token_server() if mode == 'token' else None
        reg = RegistryProcess(mode, self._dir('registry-' + mode), REGISTRY_BINARY, tls, token)
        try:
            reg.start()
        except Exception as e:
            reg.stop()
            self._failed[mode] = str(e)
            raise
        self.started[mode] = reg
        return reg

    def paging_proxy(self):
        if self._proxy is None:
            self._proxy = PagingProxy(self.registry('open').host)
        return self._proxy

    def close(self):
        if self._proxy is not None:
            self._proxy.stop()
        for reg in self.started.values():
            reg.stop()
        if self._token is not None:
            self._token.stop()


class _Registries(Mapping):
    """mode -> RegistryProcess; a registry starts the first time it is looked up."""

    def __init__(self, infra):
        self._infra = infra

    def __getitem__(self, mode):
        return self._infra.registry(mode)

    def __iter__(self):
        return iter(MODES)

    def __len__(self):
        return len(MODES)

    def __repr__(self):
        return '<registries started=%s>' % sorted(self._infra.started)


# =============================================================================
# Fixtures
# =============================================================================

_REPO_COUNTER = itertools.count(1)
_ENV_NAMES = frozenset(['HTTP_PROXY', 'HTTPS_PROXY', 'NO_PROXY', 'ALL_PROXY',
                        'SSL_CERT_FILE', 'SSL_CERT_DIR', 'DOCKER_CONFIG'])


@pytest.fixture(scope='session')
def _infra(request, tmp_path_factory):
    infra = _Infra(str(tmp_path_factory.mktemp('dxf-infra')))
    reporter = _LogReporter(infra)
    request.config.pluginmanager.register(reporter, 'dxf-registry-logs')
    yield infra
    request.config.pluginmanager.unregister(reporter)
    infra.close()


@pytest.fixture(scope='session')
def tls_files(_infra):
    """TLSFiles: the test CA (``ca_cert``: pass it as tlsverify=), server and signing certs."""
    return _infra.tls_files()


@pytest.fixture
def token_server(_infra):
    """The session's TokenServer, its knobs and request log reset around each test."""
    ts = _infra.token_server()
    ts.reset()
    yield ts
    ts.reset()


@pytest.fixture(scope='session')
def registries(_infra):
    """Mapping mode -> RegistryProcess ('open', 'basic', 'token', 'tls'), started on use."""
    return _Registries(_infra)


@pytest.fixture
def registry_for(registries):
    """A function mode -> RegistryProcess."""
    return registries.__getitem__


@pytest.fixture
def paging_proxy(_infra):
    """The session's PagingProxy in front of the open registry, reset around each test."""
    proxy = _infra.paging_proxy()
    proxy.reset()
    yield proxy
    proxy.reset()


@pytest.fixture
def repo(request):
    """A repository name unique to this test, e.g. 'test/push-blob-roundtrip-3'."""
    name = request.node.name
    if name.startswith('test_'):
        name = name[5:]
    slug = re.sub(r'[^a-z0-9]+', '-', name.lower())[:80].strip('-') or 'x'
    return 'test/%s-%d' % (slug, next(_REPO_COUNTER))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No DXF_*, proxy, SSL_CERT_* or DOCKER_CONFIG variables leak into a test."""
    for name in list(os.environ):
        upper = name.upper()
        if upper.startswith('DXF_') or upper in _ENV_NAMES:
            monkeypatch.delenv(name, raising=False)


@pytest.fixture
def cli_env(registries, tmp_path):
    """A function mode -> the environ dict the CLI needs to reach that registry."""
    home = tmp_path / 'home'
    home.mkdir()

    def make(mode='open'):
        reg = registries[mode]
        env = {'DXF_HOST': reg.host, 'PATH': os.environ.get('PATH', ''), 'HOME': str(home)}
        if reg.insecure:
            env['DXF_INSECURE'] = '1'
        else:
            env['DXF_TLSVERIFY'] = reg.tlsverify
        if reg.username is not None:
            env['DXF_USERNAME'] = reg.username
            env['DXF_PASSWORD'] = reg.password
        return env
    return make


@pytest.fixture
def run_cli():
    """A function (argv, env, stdin=b'') -> (status, stdout bytes, stderr text).

    Calls ``dxf.main`` in-process with its own streams.
    """
    import dxf

    def run(argv, env, stdin=b''):
        out, err = io.BytesIO(), io.StringIO()
        status = dxf.main(list(argv), environ=env, stdout=out, stderr=err,
                          stdin=io.BytesIO(stdin))
        return status, out.getvalue(), err.getvalue()
    return run


# =============================================================================
# 2. Infrastructure self-checks
#    Plain urllib/http.client against the fixtures, without dxf: if these
#    fail, nothing below them means anything.
# =============================================================================

def _http(url, method='GET', headers=None, data=None, cafile=None):
    """One request with urllib: (status, headers, body), errors included."""
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    ctx = _client_context(cafile) if cafile else None
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as e:
        try:
            return e.code, e.headers, e.read()
        finally:
            e.close()


def _basic(username, password):
    raw = ('%s:%s' % (username, password)).encode('utf-8')
    return 'Basic ' + base64.b64encode(raw).decode('ascii')


def _parse_bearer(header):
    assert header.startswith('Bearer '), header
    return dict(re.findall(r'(\w+)="([^"]*)"', header))


def _get_token(token_server, challenge, credentials=True, password=TEST_PASSWORD):
    params = [('service', challenge['service'])]
    if 'scope' in challenge:
        params.append(('scope', challenge['scope']))
    headers = {'Authorization': _basic(TEST_USERNAME, password)} if credentials else {}
    status, _, body = _http(challenge['realm'] + '?' + urllib.parse.urlencode(params),
                            headers=headers, cafile=token_server.cafile)
    return status, json.loads(body.decode('utf-8'))


def _push_raw(base, repo, data, headers=None, cafile=None):
    """Push one blob with POST then PUT; return the PUT's status."""
    status, resp_headers, _ = _http('%s/v2/%s/blobs/uploads/' % (base, repo), 'POST',
                                    headers=headers, data=b'', cafile=cafile)
    if status != 202:
        return status
    location = urllib.parse.urljoin(base, resp_headers['Location'])
    sep = '&' if '?' in location else '?'
    put_headers = dict(headers or {}, **{'Content-Type': 'application/octet-stream'})
    return _http(location + sep + 'digest=' + _sha256(data), 'PUT', headers=put_headers,
                 data=data, cafile=cafile)[0]


@pytest.mark.registry
class TestInfrastructure:

    def test_blob_is_deterministic_and_sized(self):
        assert _blob(0) == b''
        assert len(_blob(1000, 7)) == 1000
        assert _blob(1000, 7) == _blob(1000, 7)
        assert _blob(1000, 7) != _blob(1000, 8)

    def test_repo_fixture_gives_a_valid_unique_name(self, repo, request):
        assert REPO_RE.match(repo), repo
        assert repo.startswith('test/repo-fixture-gives-a-valid-unique-name-')
        assert len(repo) < 120

    def test_clean_env_strips_dxf_and_proxy_variables(self):
        for name in os.environ:
            assert not name.upper().startswith('DXF_'), name
            assert name.upper() not in _ENV_NAMES, name

    def test_cli_env_matches_each_mode(self, cli_env, tls_files):
        env = cli_env('open')
        assert env['DXF_INSECURE'] == '1' and 'DXF_TLSVERIFY' not in env
        assert 'DXF_USERNAME' not in env
        env = cli_env('basic')
        assert env['DXF_TLSVERIFY'] == tls_files.ca_cert and 'DXF_INSECURE' not in env
        assert (env['DXF_USERNAME'], env['DXF_PASSWORD']) == (TEST_USERNAME, TEST_PASSWORD)
        assert os.path.isdir(env['HOME'])

    def test_open_registry_answers_v2_with_200(self, registries):
        reg = registries['open']
        assert (reg.insecure, reg.tlsverify, reg.username) == (True, True, None)
        status, headers, _ = _http(reg.url + '/v2/')
        assert status == 200
        assert headers['Docker-Distribution-Api-Version'] == 'registry/2.0'

    def test_open_registry_stores_blob_where_blob_path_says(self, registries, repo):
        reg = registries['open']
        data = _blob(3000, 'on-disk')
        assert _push_raw(reg.url, repo, data) == 201
        with open(reg.blob_path(_sha256(data)), 'rb') as f:
            assert f.read() == data
        status, _, body = _http('%s/v2/%s/blobs/%s' % (reg.url, repo, _sha256(data)))
        assert (status, body) == (200, data)

    @pytest.mark.tls
    def test_basic_registry_without_credentials_is_401_basic_challenge(self, registries):
        reg = registries['basic']
        status, headers, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify)
        assert status == 401
        assert headers['WWW-Authenticate'].startswith('Basic realm=')

    @pytest.mark.tls
    def test_basic_registry_with_credentials_is_200(self, registries):
        reg = registries['basic']
        status, _, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify,
                             headers={'Authorization': _basic(reg.username, reg.password)})
        assert status == 200

    @pytest.mark.tls
    def test_basic_registry_wrong_password_is_401(self, registries):
        reg = registries['basic']
        status, _, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify,
                             headers={'Authorization': _basic(reg.username, 'wrong')})
        assert status == 401

    @pytest.mark.tls
    def test_token_registry_challenge_token_retry_is_200(self, registries, token_server):
        reg = registries['token']
        status, headers, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify)
        assert status == 401
        challenge = _parse_bearer(headers['WWW-Authenticate'])
        assert challenge['realm'] == token_server.realm
        assert challenge['service'] == token_server.service
        status, answer = _get_token(token_server, challenge)
        assert status == 200
        assert answer['token'] == answer['access_token'] and answer['expires_in'] == 300
        status, _, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify,
                             headers={'Authorization': 'Bearer ' + answer['token']})
        assert status == 200
        assert token_server.requests[0]['username'] == TEST_USERNAME

    @pytest.mark.tls
    def test_token_registry_push_and_pull_scopes(self, registries, token_server, repo):
        reg = registries['token']
        data = _blob(100, 'token')
        blob_url = '%s/v2/%s/blobs/%s' % (reg.url, repo, _sha256(data))
        status, headers, _ = _http('%s/v2/%s/blobs/uploads/' % (reg.url, repo), 'POST',
                                   data=b'', cafile=reg.tlsverify)
        assert status == 401
        challenge = _parse_bearer(headers['WWW-Authenticate'])
        # The registry lists the actions in either order (a Go map).
        rtype, name, actions = _parse_scope(challenge['scope'])
        assert (rtype, name, sorted(actions)) == ('repository', repo, ['pull', 'push'])
        status, answer = _get_token(token_server, challenge)
        bearer = {'Authorization': 'Bearer ' + answer['token']}
        assert _push_raw(reg.url, repo, data, bearer, reg.tlsverify) == 201
        # Anonymous: pull only.
        status, anon = _get_token(token_server, challenge, credentials=False)
        assert status == 200
        anon_bearer = {'Authorization': 'Bearer ' + anon['token']}
        status, _, body = _http(blob_url, cafile=reg.tlsverify, headers=anon_bearer)
        assert (status, body) == (200, data)
        status, headers, _ = _http('%s/v2/%s/blobs/uploads/' % (reg.url, repo), 'POST',
                                      data=b'', cafile=reg.tlsverify, headers=anon_bearer)
        assert status == 401 and 'insufficient_scope' in headers['WWW-Authenticate']
        assert token_server.requests[-1]['username'] is None
        assert not token_server.requests[-1]['authorization']

    @pytest.mark.tls
    def test_token_server_wrong_password_is_401(self, token_server):
        challenge = {'realm': token_server.realm, 'service': token_server.service,
                     'scope': 'repository:a/b:pull'}
        status, answer = _get_token(token_server, challenge, password='wrong')
        assert status == 401 and 'errors' in answer

    @pytest.mark.tls
    def test_token_server_records_every_scope(self, token_server):
        query = urllib.parse.urlencode([('service', token_server.service),
                                        ('scope', 'repository:a/b:pull'),
                                        ('scope', 'repository:c/d:pull,push registry:catalog:*')])
        status, _, body = _http(token_server.realm + '?' + query,
                                headers={'Authorization': _basic(TEST_USERNAME, TEST_PASSWORD)},
                                cafile=token_server.cafile)
        assert status == 200
        rec = token_server.requests[-1]
        assert rec['path'] == '/token' and rec['authorization']
        assert rec['scopes'] == ['repository:a/b:pull', 'repository:c/d:pull,push',
                                 'registry:catalog:*']
        assert len(rec['query']['scope']) == 2
        payload = json.loads(body.decode())['token'].split('.')[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + '=' * (-len(payload) % 4)))
        assert claims['access'] == [
            {'type': 'repository', 'name': 'a/b', 'actions': ['pull']},
            {'type': 'repository', 'name': 'c/d', 'actions': ['pull', 'push']},
            {'type': 'registry', 'name': 'catalog', 'actions': ['*']}]
        assert (claims['iss'], claims['aud'], claims['sub']) == (
            TOKEN_ISSUER, TOKEN_SERVICE, TEST_USERNAME)
        token_server.reset()
        assert token_server.requests == []

    @pytest.mark.tls
    def test_token_server_knobs_change_the_answer(self, registries, token_server):
        reg = registries['token']
        challenge = {'realm': token_server.realm, 'service': token_server.service}
        token_server.answer_access_token_only = True
        answer = _get_token(token_server, challenge)[1]
        assert 'token' not in answer and answer['access_token']
        token_server.answer_access_token_only = False
        token_server.empty_access_token = True
        answer = _get_token(token_server, challenge)[1]
        assert answer['access_token'] == '' and answer['token']
        token_server.refuse_all = True
        assert _get_token(token_server, challenge)[0] == 401
        token_server.reset()
        token_server.token_lifetime = -120
        expired = _get_token(token_server, challenge)[1]['token']
        status, _, _ = _http(reg.url + '/v2/', cafile=reg.tlsverify,
                             headers={'Authorization': 'Bearer ' + expired})
        assert status == 401

    @pytest.mark.tls
    def test_tls_registry_verified_with_test_ca_only(self, registries):
        reg = registries['tls']
        assert reg.tlsverify.endswith('ca.pem') and reg.username is None
        assert _http(reg.url + '/v2/', cafile=reg.tlsverify)[0] == 200
        host, port = reg.host.split(':')
        ctx = _client_context(reg.tlsverify)
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname='localhost') as tls:
                cert = tls.getpeercert()
        assert ('IP Address', '127.0.0.1') in cert['subjectAltName']
        with pytest.raises(urllib.error.URLError) as info:
            _http(reg.url + '/v2/', cafile=None)
        assert isinstance(info.value.reason, ssl.SSLError)

    def test_paging_proxy_pages_tags_with_link_headers(self, paging_proxy, repo):
        base = paging_proxy.url
        config = b'{}'
        manifest_type = 'application/vnd.oci.image.manifest.v1+json'
        assert _push_raw(base, repo, config) == 201
        manifest = json.dumps({
            'schemaVersion': 2, 'mediaType': manifest_type,
            'config': {'mediaType': 'application/vnd.oci.empty.v1+json',
                       'digest': _sha256(config), 'size': len(config)},
            'layers': []}).encode()
        tags = ['t%d' % i for i in range(5)]
        for tag in tags:
            status = _http('%s/v2/%s/manifests/%s' % (base, repo, tag), 'PUT', data=manifest,
                           headers={'Content-Type': manifest_type})[0]
            assert status == 201
        seen, pages, url = [], 0, '%s/v2/%s/tags/list' % (base, repo)
        while url:
            status, headers, body = _http(url)
            assert status == 200
            page = json.loads(body.decode())
            assert page['name'] == repo and len(page['tags']) <= 2
            seen += page['tags']
            pages += 1
            link = headers.get('Link')
            url = base + _LINK_NEXT_RE.search(link).group(1) if link else None
        assert (seen, pages) == (tags, 3)
        assert '/v2/%s/tags/list?n=2&last=t1' % repo in paging_proxy.requests
        status, headers, body = _http('%s/v2/_catalog?n=1' % base)
        assert status == 200 and len(json.loads(body.decode())['repositories']) == 1
        assert headers['Link'].startswith('</v2/_catalog?n=1&last=')

    def test_paging_proxy_forwards_chunked_uploads(self, paging_proxy, repo, registries):
        data = _blob(200000, 'chunked')
        conn = http.client.HTTPConnection(paging_proxy.host, timeout=10)
        try:
            conn.request('POST', '/v2/%s/blobs/uploads/' % repo, body=b'')
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202
            location = urllib.parse.urlsplit(resp.getheader('Location'))
            assert location.netloc in ('', paging_proxy.host)
            pieces = (data[i:i + 65536] for i in range(0, len(data), 65536))
            conn.request('PATCH', location.path + '?' + location.query, body=pieces,
                          encode_chunked=True)
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 202 and resp.getheader('Range') == '0-%d' % (len(data) - 1)
            location = urllib.parse.urlsplit(resp.getheader('Location'))
            conn.request('PUT', '%s?%s&digest=%s' % (location.path, location.query, _sha256(data)))
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 201
        finally:
            conn.close()
        blob_url = '%s/v2/%s/blobs/%s' % (registries['open'].url, repo, _sha256(data))
        status, _, body = _http(blob_url)
        assert (status, body) == (200, data)
