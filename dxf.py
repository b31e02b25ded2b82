#!/usr/bin/env python3
"""Store arbitrary data in a Docker / OCI registry: one file, standard library only.

Blobs are content-addressed (``sha256:<hex>``); aliases (registry tags) name
ordered sets of blobs.  Module example::

    from dxf import DXF

    def auth(dxf, response):
        dxf.auth_by_password('fred', 'somepassword', response=response)

    dxf = DXF('registry-1.docker.io', 'fred/datalogger', auth)
    digest = dxf.push_blob('logger.dat')
    dxf.set_alias('may15-readings', digest)
    assert dxf.get_alias('may15-readings') == [digest]
    for chunk in dxf.pull_blob(digest):
        sys.stdout.buffer.write(chunk)

Command line::

    python dxf.py push-blob fred/datalogger logger.dat @may15-readings
    python dxf.py pull-blob fred/datalogger @may15-readings > logger.dat

Map of this file (``grep -n '^# [0-9]*\\. ' dxf.py``):
  1 Imports and metadata   2 Constants      3 Errors
  4 Digests, names and small helpers        5 HTTP transport
  6 Authentication         7 Blob streams   8 Manifests
  9 Registry client (DXFBase)               10 Alias operations
  11 Registry repository (DXF)              12 Local files, OCI layout store
  13 Parallel workers       14 Directories as layers
  15 Command line           16 python-dxf compatibility   17 Entry point
The command line's environment variables: _ENV_VARS in section 15.

Licence: MIT.
"""

# =============================================================================
# 1. Imports and metadata
#    Heavy modules (socket, ssl, argparse) are imported where they
#    are first needed, so a command that makes no request starts fast.
# =============================================================================

import base64
import errno
import io
import json
import os
import re
import sys
import threading
import time
import urllib.parse

__version__ = '1.1.0'
__license__ = 'MIT'

__all__ = [
    # classes
    'BlobReader', 'DXF', 'DXFBase', 'OCILayout',
    # functions
    'hash_bytes', 'hash_file', 'split_digest', 'main',
    # errors
    'DXFError', 'DXFInputError', 'DXFConnectionError', 'DXFProtocolError',
    'DXFHTTPError',
    'DXFUnauthorizedError', 'DXFNotFoundError', 'DXFHTTPNotFoundError', 'DXFAuthError',
    'DXFAuthInsecureError', 'DXFIntegrityError', 'DXFDigestMismatchError',
    'DXFSizeMismatchError', 'DXFUnexpectedDigestMethodError',
    'DXFUnsafeArchiveError',
    'DXFManifestError', 'DXFUnsupportedSchemaType', 'DXFPlatformDataNotFound',
    'DXFMountFailed',
    # python-dxf compatibility names
    'DXFUnexpectedError', 'DXFUnexpectedStatusCodeError', 'PaginatingResponse',
    'DXFUnexpectedKeyTypeError', 'DXFDisallowedSignatureAlgorithmError',
    'DXFSignatureChainNotImplementedError', 'DXFDigestNotAvailableForSchema1',
]

# =============================================================================
# 2. Constants
# =============================================================================

_OCI_MANIFEST = 'application/vnd.oci.image.manifest.v1+json'
_OCI_INDEX = 'application/vnd.oci.image.index.v1+json'
_DOCKER_MANIFEST = 'application/vnd.docker.distribution.manifest.v2+json'
_DOCKER_LIST = 'application/vnd.docker.distribution.manifest.list.v2+json'
_DOCKER_V1 = 'application/vnd.docker.distribution.manifest.v1+prettyjws'
_MANIFEST_TYPES = (_OCI_MANIFEST, _DOCKER_MANIFEST)
_INDEX_TYPES = (_OCI_INDEX, _DOCKER_LIST)
# Without an OCI type in Accept, distribution answers 404 for OCI manifests.
_ACCEPT = ', '.join((_OCI_MANIFEST, _OCI_INDEX, _DOCKER_MANIFEST, _DOCKER_LIST,
                     _DOCKER_V1))

# What backs an alias (OCI image-spec 1.1 artifact with the empty config).
_ALIAS_ARTIFACT_TYPE = 'application/vnd.dxf.alias.v1'
_LAYER_TYPE = 'application/octet-stream'
_EMPTY_TYPE = 'application/vnd.oci.empty.v1+json'
_EMPTY_BLOB = b'{}'
_EMPTY_DIGEST = ('sha256:44136fa355b3678a1146ad16f7e8649e'
                 '94fb4fc21fe77e8310c060f61caaff8a')
_TITLE_ANNOTATION = 'org.opencontainers.image.title'
# A directory is one gzip tar layer, as oras-go's file store makes it
# (content/file: AnnotationUnpack, AnnotationDigest = the uncompressed tar's
# digest, up to its end-of-archive marker; entries under "<title>/").
_TAR_GZIP_TYPE = 'application/vnd.oci.image.layer.v1.tar+gzip'
_UNPACK_ANNOTATION = 'io.deis.oras.content.unpack'
_TAR_DIGEST_ANNOTATION = 'io.deis.oras.content.digest'
# zlib level 1 packs about twice as fast as 6 (28 against 14 MB/s on the
# bench VM, mixed text and random data) for 6% more bytes: at 200 Mbit/s
# level 6 would be slower than the wire.
_GZIP_LEVEL = 1
_DEFAULT_CONCURRENCY = 4         # blobs moving at once (DXF_CONCURRENCY)
_REF_NAME_ANNOTATION = 'org.opencontainers.image.ref.name'
_UNKNOWN_CONFIG_TYPE = 'application/vnd.unknown.config.v1+json'   # oras's
# RFC 6838 section 4.2: what --artifact-type and --config's type may be
_MEDIA_TYPE_RE = re.compile(r'[A-Za-z0-9][\w!#$&^.+-]*/[A-Za-z0-9][\w!#$&^.+-]*\Z')
# Tags of referrers, not aliases: distribution-spec 1.1's "Referrers Tag
# Schema" (sha256-<hex>) and cosign's sha256-<hex>.sig, .att and .sbom.
_REFERRERS_TAG_RE = re.compile(r'sha(?:256|512)-[a-f0-9]{64}(?:\.(?:sig|att|sbom))?\Z')
_REFERRERS_TRIES = 5             # fallback index updates lost to other writers

_CHUNK_SIZE = 1 << 20            # read/write size for blob bodies
_PIPELINE_MIN = 8 << 20          # BlobReader.copy_to hashes in a thread above
_PIPELINE_BUFFERS = 3            # buffers in flight, of at most:
_PIPELINE_PIECE = 512 << 10      # as fast as 1 MiB (512 MiB in 2.35 s
#                                  either way), 1.5 MiB less at the peak
_WRITEBACK_EVERY = 64 << 20      # start writing pulled data to disk this often
# Blobs this big come in ranges over several connections (issue 19: on long
# paths, from S3 or a CDN, one is capped), if the first eighth came slower than
# _RANGED_RATE bytes/s: on loopback 4 ranges cost CPU (256 MiB: 2.13 s, one 1.42).
_RANGED_MIN = 32 << 20
_RANGED_RATE = 32 << 20
_DEFAULT_PULL_CHUNK = 8192       # python-dxf's pull_blob chunk size
# Files (and pipes) larger than this go up in PATCHes of this size, each
# resumable, also by a later run (_UploadRecord); smaller ones in one PUT.
# 64 MiB: under Cloudflare's 100 MB body limit, and what one interrupt may
# still send (the body in flight is finished, never cut: see _STOP).
# DXF_PUSH_CHUNK_SIZE or chunk_size= sets it; after a 413 it is halved,
# down to _MIN_PUSH_CHUNK (or the registry's OCI-Chunk-Min-Length).
_PUSH_CHUNK = 64 << 20
_MIN_PUSH_CHUNK = 1 << 20
# Files are hashed and sent in reads of 128 KiB, which stay in the CPU's
# cache between the copy from the page cache and the hash or the socket:
# hashing 256 MiB took 0.23-0.26 s against 0.33-0.46 s in 1 MiB reads
# (openssl dgst: 0.39 s; EPYC, SHA-NI), sending it 40% less system time.
_FILE_PIECE = 128 << 10
_DEFAULT_TIMEOUT = 60.0          # seconds a response (or 1 MiB of one) may take
_MAX_MANIFEST = 4 << 20          # the OCI spec's manifest size floor (4 MiB)
_MAX_SMALL_BODY = 16 << 20       # JSON responses (tags, catalog, tokens, errors)
_MAX_REDIRECTS = 10
_MAX_INTERIM = 100               # 1xx responses accepted before the final one
_MAX_PAGES = 100000              # a registry's Link chain cannot loop forever
_TOKEN_MARGIN = 10               # renew a token this many seconds early
_MAX_TOKEN_LIFE = 86400          # trust no expires_in beyond a day
_TOKEN_RE = re.compile(r'[!-~]+\Z')   # what a token may hold (RFC 6750 b64token+)
_USER_AGENT = 'dxf.py/' + __version__

# Name grammars from the OCI distribution spec ("Pulling manifests") and the
# image spec's descriptor.md; digests are limited to the two registered ones.
_REPO_RE = re.compile(r'[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*'
                      r'(?:/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*\Z')
_TAG_RE = re.compile(r'[A-Za-z0-9_][A-Za-z0-9._-]{0,127}\Z')
# A DNS name (labels of letters, digits and inner hyphens), an IPv4 address
# or a bracketed IPv6 address, then an optional port.
_HOST_RE = re.compile(r'(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?'
                      r'(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*'
                      r'|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?\Z')
_DIGEST_RE = re.compile(r'(sha256:[a-f0-9]{64}|sha512:[a-f0-9]{128})\Z')
_DIGEST_LIKE_RE = re.compile(r'[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+\Z')
_DIGEST_HEX = {'sha256': 64, 'sha512': 128}   # hex digits per algorithm
_REDIRECTS = (301, 302, 303, 307, 308)
_ACTIONS = ('pull', 'push', 'delete', '*')      # token scope actions, in order
# Answers worth another try: the request may succeed once the registry (or a
# proxy in front of it) recovers or stops throttling.
_RETRY_STATUSES = (408, 429, 500, 502, 503, 504)
_DEFAULT_RETRIES = 5
_RETRY_BASE = 0.25               # seconds before the first retry, doubling
_RETRY_CAP = 10.0                # longest wait between two tries
_MAX_RETRY_TIME = 120.0          # no request keeps retrying longer than this
_BLOB_UNKNOWN_TRIES = 4          # alias PUTs told a blob is unknown (races)

# =============================================================================
# 3. Errors
#    Every failure dxf raises on purpose is a DXFError; exit_code is what the
#    command line exits with (errno names, one meaning each).
# =============================================================================


class DXFError(Exception):
    """Base class of every error dxf raises on purpose.  Its keyword
    arguments become attributes: what each subclass documents it carries."""
    exit_code = 1

    def __init__(self, *args, **fields):
        super().__init__(*args)
        self.__dict__.update(fields)


class DXFInputError(DXFError, ValueError):
    """Bad input: a malformed digest, repository name or alias, a missing file."""
    exit_code = errno.EINVAL


class DXFUnexpectedDigestMethodError(DXFInputError):
    """A digest uses an algorithm (``got``) other than sha256 or sha512."""

    def __init__(self, got, expected='sha256'):
        super().__init__('unsupported digest algorithm %r (expected %s)'
                         % (got, expected), got=got, expected=expected)


class DXFConnectionError(DXFError):
    """The registry cannot be reached or talked to (DNS, refused, TLS, timeout).

    ``method`` and ``url`` name the request, when there was one.
    """
    retryable = True

    def __init__(self, message='', method=None, url=None):
        super().__init__(message, method=method, url=url)


class DXFProtocolError(DXFConnectionError):
    """The registry (or something between) answered something malformed:
    a bad status line or header, a response too big, endless redirects."""
    retryable = False


class DXFHTTPError(DXFError):
    """The registry answered with a status the operation did not expect.

    ``status`` is the HTTP status, ``errors`` the registry's error list
    (``[{'code': ..., 'message': ...}]``, possibly empty).  ``response``
    has what python-dxf code reads from requests' ``HTTPError.response``:
    ``status_code``, ``headers``, ``text`` (and ``content``, ``reason``,
    ``url``); headers and body are empty when dxf made the error up.
    """

    def __init__(self, method, url, status, errors=None, reason='',
                 expected=None, message=None):
        errors = errors or []
        what = '; '.join(
            ('%s: %s' % (e.get('code', ''), e.get('message', ''))).strip(': ')
            for e in errors if isinstance(e, dict))
        super().__init__(message or '%s %s -> %s %s' % (
            method, urllib.parse.urlsplit(url).path, status, _printable(what or reason)),
            method=method, url=url, status=status, errors=errors, reason=reason,
            got=status, expected=expected, response=_ErrorResponse(status, reason, url))

    def _has_code(self, code):
        """Whether the registry's error list names ``code``."""
        return any(isinstance(e, dict) and e.get('code') == code for e in self.errors)


class _ErrorResponse:
    """The response behind a DXFHTTPError, shaped like a requests.Response."""

    def __init__(self, status, reason, url):
        self.status_code = status
        self.reason = reason
        self.url = url
        self.headers = {}
        self.content = b''

    @property
    def text(self):
        return self.content.decode('utf-8', 'replace')

    def json(self):
        return json.loads(self.text)


class DXFUnauthorizedError(DXFHTTPError):
    """The registry refused us (401/403), even after authenticating."""
    exit_code = errno.EACCES


class DXFNotFoundError(DXFError):
    """No such blob, manifest, alias or repository, in a registry or in an
    OCI layout.  ``what`` names it ('alias may15 in fred/logs')."""
    exit_code = errno.ENOENT

    def __init__(self, message, what=None, **fields):
        super().__init__(message, what=what, **fields)


class DXFHTTPNotFoundError(DXFHTTPError, DXFNotFoundError):
    """A registry's 404: a DXFNotFoundError that carries the HTTP response."""


class DXFAuthError(DXFError):
    """The token service failed or answered something unusable."""
    exit_code = errno.EACCES


class DXFAuthInsecureError(DXFAuthError):
    """Credentials would have travelled over plain HTTP."""


class DXFIntegrityError(DXFError):
    """Bytes received do not match what they claim to be."""
    exit_code = errno.EIO


class DXFDigestMismatchError(DXFIntegrityError):
    """Content hashed to ``got`` where ``expected`` was promised."""

    def __init__(self, got, expected):
        super().__init__('digest mismatch: expected %s, got %s'
                         % (expected, got), got=got, expected=expected)


class DXFSizeMismatchError(DXFIntegrityError):
    """A body was shorter or longer (``got``) than its declared size."""

    def __init__(self, got, expected, what='body', message=None):
        super().__init__(message or '%s is %d bytes, expected %d'
                         % (what, got, expected), got=got, expected=expected)


class DXFUnsafeArchiveError(DXFIntegrityError):
    """A directory layer would write outside its directory, or holds a
    device or another special file: nothing of it is unpacked."""


class DXFManifestError(DXFError):
    """A manifest is malformed or cannot be used for the operation."""


class DXFUnsupportedSchemaType(DXFManifestError):
    """A manifest's media type is not one dxf understands."""

    def __init__(self, media_type):
        super().__init__('unsupported manifest type %r' % (media_type,),
                         media_type=media_type)


class DXFPlatformDataNotFound(DXFManifestError):
    """A multi-platform alias has no (or no chosen) matching platform."""
    exit_code = errno.ENOENT

    def __init__(self, platform, available):
        available = list(available)
        listed = ', '.join(available) or 'none'
        super().__init__('platform %s not found (available: %s)' % (platform, listed)
                         if platform else 'alias is multi-platform; choose one with '
                         'DXF_PLATFORM or platform= (available: %s)' % listed,
                         platform=platform, available=available)


class DXFMountFailed(DXFError):
    """A cross-repository mount was not honoured: ``repo`` is where the blob
    was to come from, ``digest`` the blob."""

    def __init__(self, message, repo=None, digest=None):
        super().__init__(message, repo=repo, digest=digest)


# =============================================================================
# 4. Digests, names and small helpers
#    Pure functions only.
# =============================================================================


def split_digest(digest):
    """Split ``'sha256:<hex>'`` into ``('sha256', '<hex>')``, validating it.

    :raises DXFUnexpectedDigestMethodError: the algorithm is not sha256/sha512
    :raises DXFInputError: the digest is malformed
    """
    if not isinstance(digest, str) or not _DIGEST_LIKE_RE.match(digest):
        hint = ('; did you mean sha256:%s?' % digest if re.match(r'[0-9a-f]{64}\Z', str(digest))
                else '; an alias is written @%s' % digest if isinstance(digest, str)
                and _TAG_RE.match(digest) else '')      # the usual slips
        raise DXFInputError('invalid digest %r%s' % (_printable(digest), hint))
    method, _, encoded = digest.partition(':')
    if method not in _DIGEST_HEX:
        raise DXFUnexpectedDigestMethodError(method)
    if not _DIGEST_RE.match(digest):
        raise DXFInputError('invalid %s digest %r (lower-case hex of %d digits '
                            'expected)' % (method, _printable(digest),
                                           _DIGEST_HEX[method]))
    return method, encoded


def hash_bytes(data, algorithm='sha256'):
    """Return the digest (``'sha256:<hex>'``) of a bytes-like object."""
    return _Hasher(algorithm, data).digest()


def hash_file(filename, algorithm='sha256'):
    """Return the digest (``'sha256:<hex>'``) of a file's contents."""
    with _open_input(filename) as f:
        return _Hasher(algorithm).feed(f).digest()


class _Hasher:
    """A hash that knows its algorithm: digests (``'alg:hex'``) are made and
    checked only here.  hashlib (OpenSSL) is imported on first use: 3 ms and
    4 MiB that get-alias and the like do without."""

    def __init__(self, algorithm='sha256', data=b'', h=None):
        if algorithm not in _DIGEST_HEX:
            raise DXFUnexpectedDigestMethodError(algorithm)
        import hashlib
        self.algorithm = algorithm
        self.h = h or getattr(hashlib, algorithm)()    # no argument: python-dxf's
        self.update = self.h.update    # tests swap hashlib.sha256 for a class
        if data:
            self.update(data)

    @classmethod
    def like(cls, digest, data=b''):
        """A hasher with the algorithm of ``digest`` (validated; None: sha256)."""
        return cls(split_digest(digest)[0] if digest else 'sha256', data)

    def digest(self):
        return self.algorithm + ':' + self.h.hexdigest()

    def verify(self, expected, whole=True):
        """The digest, which must be ``expected``: see _verify."""
        return _verify(self.digest(), expected, whole)

    def feed(self, f):
        """Hash the rest of the binary file ``f``; return self."""
        buf = bytearray(_FILE_PIECE)
        view = memoryview(buf)
        while True:
            _check_stop()         # a file hashed in a worker thread: see _STOP
            n = f.readinto(buf)
            if not n:
                return self
            self.update(view[:n])


def _verify(got, expected, whole=True):
    """``got``, the digest of what arrived, if it is ``expected`` (None:
    any) and covers all of it (``whole``); else DXFDigestMismatchError."""
    if expected is not None and (got != expected or not whole):
        raise DXFDigestMismatchError(got, expected)
    return got


def _open_input(filename):
    try:
        return open(filename, 'rb')
    except OSError as exc:
        raise DXFInputError('cannot read %s: %s'
                            % (filename, exc.strerror or exc)) from exc


def _check_repo(repo):
    if (not isinstance(repo, str) or len(repo) > 255
            or not _REPO_RE.match(repo)):
        raise DXFInputError(
            'invalid repository name %r (lower-case letters, digits and '
            'separators . _ - /)' % (_printable(repo),))
    return repo


def _check_alias(alias):
    if not isinstance(alias, str) or not _TAG_RE.match(alias):
        raise DXFInputError('invalid alias %r (at most 128 letters, digits and '
                            '. _ -, not starting with . or -)' % (_printable(alias),))
    return alias


def _check_ref(ref):
    """An alias or a digest (for manifests)."""
    if isinstance(ref, str) and ':' in ref:
        split_digest(ref)
        return ref
    return _check_alias(ref)


def _printable(value, limit=200):
    """A value safe to show on one line (no control characters)."""
    text = value if isinstance(value, str) else repr(value)
    text = ''.join(c if c.isprintable() else '?' for c in text)
    return text if len(text) <= limit else text[:limit] + '...'


def _is_loopback(host):
    """True for ``localhost`` or an IP literal of the loopback: not for a
    name that merely starts with 127. (127.evil.example)."""
    host = host.strip('[]').lower()
    if host == 'localhost':
        return True
    import ipaddress
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _is_docker_hub(host):
    """Docker Hub: docker.io and its own subdomains (index., registry-1.),
    not any name ending so ('evil-docker.io' is someone else's registry)."""
    name = host.rsplit(':', 1)[0].lower()
    return name == 'docker.io' or name.endswith('.docker.io')


def _parse_link_next(header):
    """The target of rel="next" in an RFC 8288 Link header, or None."""
    for m in re.finditer(r'<([^>]*)>((?:\s*;\s*[^,;]+)*)', header or ''):
        for param in m.group(2).split(';'):
            name, _, value = param.strip().partition('=')
            if (name.strip().lower() == 'rel'
                    and 'next' in value.strip().strip('"').lower().split()):
                return m.group(1)
    return None


# A token (RFC 7230 tchar) or a quoted string with backslash escapes.
_AUTH_PARAM_RE = re.compile(
    r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)\s*=\s*'
    r'("(?:[^"\\]|\\.)*"|[!#$%&\'*+.^_`|~0-9A-Za-z/:=-]*)\s*(,|\Z)')
_AUTH_SCHEME_RE = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)(?:\s+|\Z)')


def _parse_www_authenticate(header):
    """Parse a WWW-Authenticate value into ``[(scheme, {param: value})]``.

    Scheme names are lower-cased; quoted values may hold commas and spaces
    (``scope="repository:a:pull,push"``); several challenges may follow each
    other (RFC 7235 section 4.1).
    """
    challenges = []
    pos = 0
    header = header or ''
    while pos < len(header):
        if header[pos] in ', \t':
            pos += 1
            continue
        m = _AUTH_SCHEME_RE.match(header, pos)
        if not m:
            break
        scheme, pos = m.group(1).lower(), m.end()
        params = {}
        while True:
            p = _AUTH_PARAM_RE.match(header, pos)
            if not p:
                break
            value = p.group(2)
            if value.startswith('"'):
                value = re.sub(r'\\(.)', r'\1', value[1:-1])
            params[p.group(1).lower()] = value
            pos = p.end()
        if not params:   # token68 form (e.g. "Negotiate abc=="); skip it
            pos = re.compile(r'[^,]*').match(header, pos).end()
        challenges.append((scheme, params))
    return challenges


def _registry_errors(body):
    """The ``errors`` list of a registry error body, or []."""
    try:
        doc = json.loads(body.decode('utf-8'))
    except (ValueError, RecursionError):     # RecursionError: [[[[...
        return []
    errors = doc.get('errors') if isinstance(doc, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(
        errors, list) else []


def _load_json(body, what):
    try:
        return json.loads(body.decode('utf-8'))
    except (ValueError, RecursionError):     # RecursionError: [[[[...
        raise DXFManifestError('%s is not valid JSON' % what) from None


def _one_digest(digest):
    if isinstance(digest, (list, tuple)):
        if len(digest) != 1:
            raise DXFInputError('pull_blob takes one digest, not %d'
                                % len(digest))
        digest = digest[0]
    split_digest(digest)
    return digest


def _range_end(value):
    """The last byte of an upload's ``Range: 0-<end>`` (-1 when empty)."""
    m = re.match(r'\s*(?:bytes=)?0-(\d+)\s*\Z', value or '')
    if not m:
        raise DXFProtocolError('upload status without a usable Range header')
    return int(m.group(1))


# =============================================================================
# 5. HTTP transport
#    http.client underneath (imported on first use); one pool of keep-alive
#    connections per (scheme, host, port), redirects, proxies, a deadline on
#    every answer; credentials come from the caller (section 6), and a
#    redirect to another origin drops them.  A request's life:
#
#      pooled --_get--> in use --read to the end--> release --> pooled
#        | stale (_failure_kind): closed,          | cut, timed out, bytes
#        v one fresh try, free of the budget       v left over, will_close
#      closed                                    closed
#
#    Transient failures and 408/429/5xx are tried again on the operation's
#    _Budget, shared with its worker threads (_Operation, _in_parallel); a
#    401 is answered once, outside it.  Uploads (DXF._upload, _send) retry
#    in three tiers, all on it: the request (here); the chunk (a failed
#    PATCH asks the session's Range and goes on; a 413 halves it, free);
#    the session (404 or broken: a new POST, if the source can restart).
# =============================================================================


class _Body:
    """An upload body.  Every kind answers the same three things:
    ``length``, ``rewind()`` and ``send(write)``; every kind can be sent
    again after a failure (pipes are read ahead into a file: _Source).
    This one is bytes held in memory.
    """

    def __init__(self, data):
        self.data = data
        self.length = len(data)

    def rewind(self):
        pass

    def send(self, write):
        write(self.data)


class _FileBody(_Body):
    """``length`` bytes of an open file from where it stands now.

    ``on_data(view)`` sees every piece sent (hashing, progress).
    """

    def __init__(self, f, length, on_data=None):
        self.f = f
        self.start = f.tell()
        self.length = length
        self.on_data = on_data

    def rewind(self):
        self.f.seek(self.start)

    def send(self, write):
        buf = bytearray(min(_FILE_PIECE, max(self.length, 1)))
        view = memoryview(buf)
        left = self.length
        while left > 0:
            n = self.f.readinto(view[:min(left, len(buf))])
            if not n:
                raise DXFInputError('file shrank while it was being sent')
            if self.on_data:
                self.on_data(view[:n])
            write(view[:n])
            left -= n


class _Budget:
    """How many more retries one operation (_Operation) may make, and until
    when, drawn on by every layer that retries (requests, upload sessions,
    chunk and download resumes) through ``retry``, so retries never multiply.
    The time limit counts from the first failure: a long transfer may still retry."""

    def __init__(self, retries, window):
        self.left = retries
        self.window = window
        self.deadline = None
        self.lock = threading.Lock()    # threads of one operation share it

    def retry(self, failure, also=(), delay=None, attempt=0):
        """The one retry decision: True (after the wait) when ``failure`` is worth
        another try (a transient DXFConnectionError, a status in _RETRY_STATUSES
        or in ``also``, None: any broken transfer) and the budget allows it."""
        status = getattr(failure, 'status', None)
        return (getattr(failure, 'retryable', False) or status in _RETRY_STATUSES
                or status in also) and self.spend(delay, attempt)

    def spend(self, delay=None, attempt=0):
        """Wait before another try and return True, or False when spent."""
        if delay is None:
            delay = min(_RETRY_CAP, _RETRY_BASE * 2 ** attempt)
            delay *= 0.5 + _random_fraction() / 2
        now = time.monotonic()
        with self.lock:
            if self.deadline is None:
                self.deadline = now + self.window
            if self.left <= 0 or now + delay > self.deadline:
                return False
            self.left -= 1
        _STOP.wait(delay)      # an interrupt ends the wait (and the retries)
        _check_stop()
        return True


class _Operation:
    """One public operation: the retry budget its requests share and the
    token actions they ask for beyond their own, so that one token serves
    the whole operation.  It lives in the transport's thread-local
    (``with transport.operation(*actions):``); the parallel runner hands it
    whole to its workers (``transport.joined``), so it never changes."""

    def __init__(self, budget, actions=frozenset()):
        self.budget = budget
        self.actions = frozenset(actions)

    def needing(self, actions):
        """This operation, or one on its budget also asking for ``actions``."""
        if self.actions.issuperset(actions):
            return self
        return _Operation(self.budget, self.actions.union(actions))


class _Joined:
    """``with``: ``operation`` is the thread's own until the block ends."""

    def __init__(self, local, operation):
        self.local, self.operation = local, operation

    def __enter__(self):
        self.outer = getattr(self.local, 'operation', None)
        self.local.operation = self.operation
        return self.operation

    def __exit__(self, *exc):
        self.local.operation = self.outer


class _DeadlineSocketIO(io.RawIOBase):
    """The socket reads of one response, each limited to the time left before
    ``deadline`` (a monotonic time).

    http.client's own timeout is per read, so a server that trickles a byte
    at a time could hold a response open for ever; this bounds it.  It also
    counts what was read, so that bytes the server sent beyond the response
    (``leftover``) keep the connection out of the pool.
    """

    def __init__(self, sock, timeout):
        # SocketIO (not recv_into) so the socket counts this user, as with
        # socket.makefile: http.client closes the connection first when
        # the response says so, and the body is read after.
        self._io = sock.makefile('rb', buffering=0)
        self.sock = sock
        self.timeout = timeout
        self.deadline = None
        self.received = 0
        self.leftover = 0

    def makefile(self, mode):
        # 64 KiB: blob reads of 1 MiB bypass the buffer (no copy); headers
        # and small responses take few system calls.
        return _DeadlineFile(self, 64 << 10)

    def allow(self):
        """The next reads must be done within the timeout from now."""
        self.deadline = time.monotonic() + self.timeout

    def expired(self):
        return self.deadline is not None and time.monotonic() >= self.deadline

    def readable(self):
        return True

    def tell(self):
        return self.received

    def readinto(self, b):
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left <= 0:
                import socket
                raise socket.timeout('timed out')
            self.sock.settimeout(min(left, self.timeout))
        n = self._io.readinto(b)
        self.received += n or 0
        return n

    def close(self):
        self._io.close()
        super().close()


class _DeadlineFile(io.BufferedReader):

    def close(self):
        if not self.closed:
            try:
                self.raw.leftover = self.raw.received - self.tell()
            except (OSError, ValueError):
                self.raw.leftover = -1
        super().close()


def _http_response_class():
    """http.client.HTTPResponse, stricter where RFC 9112 asks for it."""
    import http.client

    class _HTTPResponse(http.client.HTTPResponse):
        interim = 0

        def _read_status(self):
            version, status, reason = super()._read_status()
            if 100 <= status < 200 and status != 101:
                # 102 and 103 come before the response as 100 does; http.client
                # skips only 100, so call them that.
                self.interim += 1
                if self.interim > _MAX_INTERIM:
                    raise http.client.HTTPException(
                        'more than %d interim answers' % _MAX_INTERIM)
                status = 100
            return version, status, reason

        def begin(self):
            super().begin()
            if self.status == 101:
                raise http.client.HTTPException(
                    'the server switched protocols unasked')
            lengths = set()
            for value in self.msg.get_all('Content-Length') or ():
                lengths.update(v.strip() for v in value.split(','))
            if len(lengths) > 1:
                raise http.client.HTTPException('conflicting Content-Length')
            coding = self.msg.get('Transfer-Encoding')
            if coding is not None and coding.strip().lower() != 'chunked':
                raise http.client.HTTPException(
                    'unsupported Transfer-Encoding %r' % _printable(coding, 40))
            if self.length == 0:
                # HEAD, 204 and 304 have no body whatever the headers say;
                # http.client would wait for chunks that never come.
                self.chunked = False
    return _HTTPResponse


def _new_connection(scheme, host, port, timeout, context=None, proxy=None):
    """An http.client connection to ``host``, directly or through ``proxy``
    (``(host, port, headers)``): https through a CONNECT tunnel, http in
    absolute form.  ``prefix`` is what goes before the request path."""
    import http.client
    host = _ascii_host(host)
    default = 443 if scheme == 'https' else 80
    where = (_ascii_host(proxy[0]), proxy[1]) if proxy else (host, port or default)
    if scheme == 'https':
        conn = http.client.HTTPSConnection(where[0], where[1], timeout=timeout,
                                           context=context)
        if proxy:
            conn.set_tunnel(host, port or default, proxy[2])
    else:
        conn = http.client.HTTPConnection(where[0], where[1], timeout=timeout)
    plain_proxy = proxy and scheme == 'http'
    conn.prefix = 'http://' + _netloc(host, port) if plain_proxy else ''
    conn.extra = proxy[2] if plain_proxy else {}
    conn.host_header = _netloc(host, port)
    conn.clock = None
    response_class = _http_response_class()

    def respond(sock, *args, **kwargs):
        conn.clock = _DeadlineSocketIO(sock, timeout)
        conn.clock.allow()      # the status line and headers, in time
        return response_class(conn.clock, *args, **kwargs)
    conn.response_class = respond
    return conn


def _closed_by_server(conn):
    """True if an idle connection has something to read: the server's close
    (or data it should not have sent).  On TLS a late session ticket counts
    too, which costs no more than a new connection."""
    if conn.sock is None:
        return False
    import select
    try:
        return bool(select.select([conn.sock], [], [], 0)[0])
    except (OSError, ValueError):
        return True


def _ascii_host(host):
    """``host`` as ASCII (IDNA for a name like a redirect's bücher.example)."""
    try:
        host.encode('ascii')
        return host
    except UnicodeEncodeError:
        try:
            return host.encode('idna').decode('ascii')
        except UnicodeError:
            raise DXFProtocolError('host name %r is not valid'
                                   % _printable(host, 80)) from None


def _failure_kind(exc):
    """The one classifier of low-level failures (what a connection raises
    while a request or its answer is under way).  None: not one (e.g. the
    caller's data iterable failed); 'stale': a pooled connection the server
    has since closed (try at once on a fresh one); 'permanent': a retry
    cannot mend it (certificates, unknown hosts, a proxy refusing the
    CONNECT); else 'transient', worth a retry within the budget."""
    import http.client
    import socket
    # OverflowError: http.client's read() of a Content-Length beyond ssize_t
    if not isinstance(exc, (OSError, http.client.HTTPException, OverflowError)):
        return None
    if isinstance(exc, (ConnectionResetError, BrokenPipeError,
                        ConnectionAbortedError, http.client.BadStatusLine)):
        return 'stale'
    # http.client's wording for 407 Proxy Authentication Required and the like
    if str(exc).startswith('Tunnel connection failed: 4'):
        return 'permanent'
    permanent = (socket.gaierror,)
    try:
        import ssl
        permanent += (ssl.SSLError, ssl.CertificateError)
    except ImportError:
        pass
    return 'permanent' if isinstance(exc, permanent) else 'transient'


class _Response:
    """A response whose connection goes back to the pool once it is read."""

    def __init__(self, transport, key, conn, raw, method, url):
        self._transport = transport
        self._key = key
        self._conn = conn
        self._clock = conn.clock
        self.raw = raw
        self.method = method
        self.url = url
        self.status = raw.status
        self.reason = raw.reason or ''
        self.headers = raw.msg

    def header(self, name, default=None):
        """A header's value, stripped; several WWW-Authenticate lines are one
        list (RFC 9110 5.3)."""
        values = self.headers.get_all(name)
        if not values:
            return default
        if name.lower() != 'www-authenticate':
            values = values[:1]
        return ', '.join(re.sub(r'\r?\n[ \t]+', ' ', v).strip() for v in values)

    @property
    def length(self):
        """Content-Length as an int, or None."""
        value = self.header('Content-Length')
        if value is None or self.header('Transfer-Encoding') or not re.match(
                r'[0-9]+\Z', value):
            return None
        # Any digits make a length: a body short of it is cut (issue 16).
        return min(int(value[:31]), 10 ** 30)   # int() takes <= 4300 digits

    def _fail(self, exc):
        if _failure_kind(exc) is None:
            raise exc
        self.close()
        raise _connection_error(self.method, self.url, exc,
                                'connection broke while reading', self._clock) from exc

    def chunk(self, n, into=None):
        """Up to ``n`` body bytes (or into the buffer ``into``, returning the
        count); fewer only at the end.  Each call must finish within the
        timeout."""
        self._clock.allow()
        _check_stop()         # a blob pulled in a worker thread: see _STOP
        try:
            if into is not None:
                return self.raw.readinto(into)
            return self.raw.read(n)
        except Exception as exc:
            self._fail(exc)

    def read(self, limit=_MAX_SMALL_BODY, what='answer'):
        """The whole body (for small responses), at most ``limit`` bytes, all
        within the timeout."""
        body = getattr(self, 'body', None)
        if body is not None:
            return body
        length = self.length
        if self.method == 'HEAD' or self.status in (204, 304):
            length = 0

        def too_big():
            self.close()
            return DXFProtocolError('%s %s: %s is larger than the %d-byte limit'
                                    % (self.method, _path(self.url), what, limit))
        if length is not None and length > limit:
            raise too_big()
        self._clock.allow()
        parts, got = [], 0
        try:
            while got <= limit:
                piece = self.raw.read(min(_CHUNK_SIZE, limit + 1 - got))
                if not piece:
                    break
                parts.append(piece)
                got += len(piece)
        except Exception as exc:
            self._fail(exc)
        data = b''.join(parts)
        if len(data) > limit:
            raise too_big()
        if length is not None and len(data) != length:
            # Fewer bytes than announced: the connection broke, so this is
            # worth a retry.
            self.close()
            raise DXFConnectionError('%s %s: %s cut short after %d of %d '
                                     'bytes' % (self.method, _path(self.url),
                                                what, len(data), length))
        self.release()
        self.body = data
        return data

    def release(self):
        """Give the connection back if the response was read to its end and
        nothing else is waiting on it; otherwise close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if (self.raw.isclosed() and not self.raw.will_close
                and not self._clock.leftover
                and not _closed_by_server(conn)):
            self._transport._put(self._key, conn)
        else:
            self.raw.close()
            conn.close()

    close = release     # dropping a response not read to its end closes it


def _exc_text(exc):
    import socket
    if isinstance(exc, socket.timeout):
        return 'timed out'
    if isinstance(exc, socket.gaierror):
        return 'cannot resolve the host name (%s)' % (exc.strerror or exc)
    text = getattr(exc, 'strerror', None) or str(exc) or type(exc).__name__
    reason = getattr(exc, 'reason', None)   # ssl.SSLError's short reason
    if reason and reason not in text:
        text = '%s (%s)' % (text, reason)
    if reason == 'WRONG_VERSION_NUMBER':    # TLS spoken to a plain http port
        text += '; is the registry plain http (DXF_INSECURE=1)?'
    return _printable(text)


def _connection_error(method, url, exc, what=None, clock=None):
    """The DXFConnectionError (or DXFProtocolError) for a low-level failure.
    If the answer's ``clock`` ran out, it is a timeout, whatever the parser
    made of the part that came."""
    import http.client
    late = clock is not None and clock.expired()
    text = 'timed out' if late else _exc_text(exc)
    if what:
        text = '%s (%s)' % (what, text)
    protocol = not late and isinstance(exc, http.client.HTTPException) and not (
        isinstance(exc, (http.client.RemoteDisconnected, http.client.IncompleteRead)))
    cls = DXFProtocolError if protocol else DXFConnectionError
    error = cls('%s %s: %s' % (method, _printable(url, 200), text),
                method=method, url=url)
    error.retryable = _failure_kind(exc) != 'permanent'
    return error


def _path(url):
    return urllib.parse.urlsplit(url).path or '/'


class _Transport:
    """Keep-alive HTTP(S) connections shared by every DXF object made from
    one; thread-safe (a request's life: the section's banner)."""

    def __init__(self, tlsverify=True, timeout=None, retries=None,
                 proxies=None):
        self.tlsverify = tlsverify
        self.proxies = _proxy_settings(os.environ if proxies is None
                                       else proxies)
        self.timeout = _DEFAULT_TIMEOUT if timeout is None else timeout
        self.retries = _DEFAULT_RETRIES if retries is None else retries
        self.trace = None     # trace(line): one line per request (no headers)
        self.warn = None      # warn(text): each text of a "Warning: 299 - text" header
        self._ssl_contexts = {}   # with the client certificate (True) or not
        self.cert = None      # ((certfile, keyfile), the one origin it is shown to)
        self._pool = {}
        self._lock = threading.Lock()
        self.lock = threading.Lock()     # for callers: one writer at a time
        # .operation: this thread's _Operation; .challenged: (scope, the
        # refused Authorization) while a 401 is being answered (DXFBase)
        self.local = threading.local()

    def operation(self, *actions):
        """A context in which this thread's requests share one retry budget
        and ask for ``actions`` too; inside one, they join it."""
        return self.joined(self.current().needing(actions))

    def joined(self, operation):
        """A context in which this thread takes part in ``operation``."""
        return _Joined(self.local, operation)

    def current(self):
        """The operation in progress, or a new one (for one request)."""
        return (getattr(self.local, 'operation', None)
                or _Operation(_Budget(self.retries, _MAX_RETRY_TIME)))

    def _context(self, cert=False):
        if cert not in self._ssl_contexts:
            try:
                import ssl
            except ImportError:
                raise DXFConnectionError('this Python has no ssl module; '
                                         'https is unavailable') from None
            if self.tlsverify is False:
                ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            elif isinstance(self.tlsverify, str):
                if not os.path.isfile(self.tlsverify):
                    raise DXFInputError('CA bundle %s not found'
                                        % self.tlsverify)
                try:
                    ctx = ssl.create_default_context(cafile=self.tlsverify)
                except (OSError, ssl.SSLError) as exc:
                    raise DXFInputError('cannot load CA bundle %s: %s' % (
                        self.tlsverify, _exc_text(exc))) from exc
            else:
                ctx = ssl.create_default_context()
            try:
                if cert:
                    ctx.load_cert_chain(*self.cert[0])
            except (OSError, ssl.SSLError) as exc:
                raise DXFInputError('cannot load the client certificate %s: %s' % (
                    ' and '.join(filter(None, self.cert[0])), _exc_text(exc))) from exc
            self._ssl_contexts[cert] = ctx
        return self._ssl_contexts[cert]

    def _get(self, key):
        """A pooled connection (checked that the server has neither closed
        it nor sent anything since) or a new one, and whether it was pooled."""
        while True:
            with self._lock:
                idle = self._pool.get(key)
                conn = idle.pop() if idle else None
            if conn is None:
                break
            if not _closed_by_server(conn):
                return conn, True
            conn.close()
        scheme, host, port = key
        # A client certificate is a credential: for the registry's origin only.
        context = self._context(bool(self.cert) and (scheme, host, port or 443) ==
                                self.cert[1]) if scheme == 'https' else None
        proxy = _proxy_for(self.proxies, scheme, host, port)
        return _new_connection(scheme, host, port, self.timeout, context,
                               proxy), False

    def _put(self, key, conn):
        with self._lock:
            self._pool.setdefault(key, []).append(conn)

    def close(self):
        """Close every idle connection."""
        with self._lock:
            pools, self._pool = self._pool, {}
        for conns in pools.values():
            for conn in conns:
                conn.close()

    def request(self, method, url, headers=None, body=None, read=None,
                what='answer', redirects=True):
        """Send a request; return a _Response.

        ``body`` is None, bytes or a _Body.  Connection failures and
        408/429/5xx answers are retried with backoff (honouring Retry-After)
        (the body sent again), drawing on the operation's budget;
        redirects are followed unless ``redirects`` is False.  With ``read``
        (a size limit) the body is read too, so an answer cut short is
        retried as well; otherwise the caller streams it.
        """
        if body is not None and not isinstance(body, _Body):
            body = _Body(bytes(body))
        budget = self.current().budget
        attempt = 0
        while True:
            try:
                resp = self._follow(method, url, headers, body, redirects)
                if resp.status not in _RETRY_STATUSES:
                    if read is not None:
                        resp.read(read, what)
                    return resp
                delay = _retry_after(resp.header('Retry-After'))
                failure = resp
                resp.read()        # drain, so the connection is reused
            except DXFConnectionError as exc:
                delay, failure = None, exc
            if not budget.retry(failure, delay=delay, attempt=attempt):
                if isinstance(failure, Exception):
                    try:
                        raise failure
                    finally:     # no cycle through this frame: it would keep a
                        failure = None   # refused CONNECT's socket open until GC
                return failure
            attempt += 1
            if body is not None:
                body.rewind()

    def _follow(self, method, url, headers, body, redirects=True):
        """Send a request, following redirects."""
        headers = dict(headers or {})
        for _ in range(_MAX_REDIRECTS + 1):
            resp = self._send(method, url, headers, body)
            location = resp.header('Location')
            if not redirects or resp.status not in _REDIRECTS or not location:
                return resp
            resp.read(limit=_MAX_SMALL_BODY)
            new_url = _join(url, location)
            if urllib.parse.urlsplit(new_url).scheme not in ('http', 'https'):
                return resp
            if _origin(new_url) != _origin(url):
                # Never hand our credentials to another origin (e.g. the S3
                # bucket a registry redirects blob downloads to).
                headers.pop('Authorization', None)
            if resp.status == 303 or (resp.status in (301, 302)
                                      and method == 'POST'):
                method, body = ('HEAD' if method == 'HEAD' else 'GET'), None
                headers.pop('Content-Length', None)
                headers.pop('Content-Type', None)
            if body is not None:
                body.rewind()
            url = new_url
        raise DXFProtocolError('%s %s: more than %d redirects'
                               % (method, _path(url), _MAX_REDIRECTS),
                               method=method, url=url)

    def _send(self, method, url, headers, body):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ('http', 'https') or not parts.hostname:
            raise DXFProtocolError('cannot fetch %r' % _printable(url),
                                   method=method, url=url)
        key = (parts.scheme, parts.hostname, _port(url))
        target = parts.path or '/'
        if parts.query:
            target += '?' + parts.query
        for attempt in (0, 1):
            conn, reused = self._get(key)
            started = time.time()
            try:
                self._write(conn, method, target, headers, body)
                raw = conn.getresponse()
                if self.trace:
                    self.trace('%s %s://%s%s -> %d (%.0f ms)' % (
                        method, parts.scheme, parts.netloc, parts.path,
                        raw.status, 1000 * (time.time() - started)))
                for value in (raw.msg.get_all('Warning') or ()) if self.warn else ():
                    # distribution-spec "Warnings": shown, never acted on
                    for text in re.findall(r'299\s+\S+\s+"((?:[^"\\]|\\.)*)"', value):
                        self.warn(re.sub(r'\\(.)', r'\1', text))
            except BaseException as exc:
                conn.close()
                kind = _failure_kind(exc)
                if kind is None:
                    raise     # e.g. the caller's data iterable failed
                if reused and attempt == 0 and kind == 'stale':
                    if body is not None:
                        body.rewind()
                    continue
                raise _connection_error(method, url, exc, None, conn.clock) from exc
            return _Response(self, key, conn, raw, method, url)

    @staticmethod
    def _write(conn, method, target, headers, body):
        if conn.sock is None:
            conn.connect()
        conn.sock.settimeout(conn.timeout)   # the last answer's clock set it
        conn.clock = None
        fields = {'Host': conn.host_header}
        fields.update(conn.extra)
        names = {k.lower() for k in headers}
        if 'user-agent' not in names:
            fields['User-Agent'] = _USER_AGENT
        if 'content-length' not in names and (
                body is not None or method in ('POST', 'PUT', 'PATCH')):
            fields['Content-Length'] = body.length if body else 0
        fields.update(headers)
        try:
            conn.putrequest(method, conn.prefix + target, skip_host=True,
                            skip_accept_encoding=True)
        except ValueError as exc:
            # http.client refuses a target with spaces or control characters
            # (from a Location or DXF_AUTH_HOST): never send it.
            raise DXFProtocolError('%s %s: refusing to send it (%s)' % (
                method, _printable(target, 200), _printable(str(exc), 100)),
                method=method) from None
        for name, value in fields.items():
            value = str(value)
            try:
                value.encode('latin-1')
            except UnicodeEncodeError:
                raise DXFInputError('%s %s: header %s holds characters HTTP '
                                    'cannot carry' % (method, target, name)) from None
            if '\n' in value or '\r' in value:
                raise DXFInputError('header %s holds a line break' % name)
            conn.putheader(name, value)
        if body is None or (type(body) is _Body and len(body.data) <= _CHUNK_SIZE):
            conn.endheaders(body.data if body is not None and body.data else None)
        else:
            conn.endheaders()
            body.send(conn.sock.sendall)


def _join(base, location):
    """A Location (or Link) resolved against the URL it came with."""
    try:
        url = urllib.parse.urljoin(base, location)
        _port(url)
        return url
    except ValueError:
        raise DXFProtocolError('bad URL %r in an answer to %s'
                               % (_printable(location, 100), _path(base))) from None


def _add_query(url, **params):
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    query += sorted(params.items())
    return urllib.parse.urlunsplit(
        parts._replace(query=urllib.parse.urlencode(query)))


def _random_fraction():
    """A float in [0, 1) for backoff jitter (the random module costs ms)."""
    return int.from_bytes(os.urandom(4), 'big') / 2.0 ** 32


def _retry_after(value):
    """Seconds to wait from a Retry-After value (seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if re.match(r'[0-9]{1,9}\Z', value):
        seconds = int(value)
    else:
        import email.utils
        try:
            when = email.utils.parsedate_to_datetime(value)
            seconds = when.timestamp() - time.time()
        except (TypeError, ValueError, IndexError, OverflowError):
            return None
    return max(0.0, min(float(seconds), _RETRY_CAP * 3))


def _proxy_settings(environ):
    """``{'http': url, 'https': url, 'no': list}`` from the *_proxy variables.

    Lower case wins, as with curl.  HTTP_PROXY is ignored in a CGI request
    (REQUEST_METHOD set), where a client could set it ("httpoxy").
    """
    found = {}
    for name in ('http', 'https', 'no'):
        value = environ.get(name + '_proxy')
        if value is None and not (name == 'http' and 'REQUEST_METHOD' in environ):
            value = environ.get(name.upper() + '_PROXY')
        if value and value.strip():
            found[name] = value.strip()
    if 'no' in found:
        found['no'] = [h.strip().lower() for h in found['no'].split(',')
                       if h.strip()]
    return found


def _proxy_for(proxies, scheme, host, port):
    """``(host, port, headers)`` of the proxy to use, or None."""
    url = proxies.get(scheme)
    if not url or _bypasses_proxy(proxies.get('no', ()), host=host.lower(),
                                  port=str(port or (443 if scheme == 'https' else 80))):
        return None
    return _proxy_address(url)


def _bypasses_proxy(no_proxy, host, port):
    """True when an entry of ``no_proxy`` names ``host`` (and ``port``, if
    it says one): names, domain suffixes, IPv6 addresses bare or in
    brackets, address ranges and ``*``."""
    for entry in no_proxy:
        if entry == '*':
            return True
        if entry.startswith('['):        # [::1] or [::1]:5000
            name, _, entry_port = entry[1:].partition(']')
            entry_port = entry_port[1:]
        elif entry.count(':') > 1:       # ::1, an IPv6 address alone
            name, entry_port = entry, ''
        else:
            name, _, entry_port = entry.partition(':')
        name = name.lstrip('.')
        if entry_port and entry_port != port:
            continue
        if host == name or host.endswith('.' + name) or (
                '/' in name and _in_network(host, name)):
            return True
    return False


def _proxy_address(url):
    """``(host, port, headers)`` of the proxy URL (http only; credentials
    in it become Proxy-Authorization)."""
    if '://' not in url:
        url = 'http://' + url
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise DXFInputError('proxy %s is not a URL' % _printable(url)) from None
    if parts.scheme != 'http' or not parts.hostname:
        raise DXFInputError('unsupported proxy %s (http://host:port expected)'
                            % _printable(parts.scheme + '://' + (
                                parts.hostname or '')))
    headers = {}
    if parts.username is not None:
        creds = '%s:%s' % (urllib.parse.unquote(parts.username),
                           urllib.parse.unquote(parts.password or ''))
        headers['Proxy-Authorization'] = 'Basic ' + base64.b64encode(
            creds.encode('utf-8')).decode('ascii')
    try:
        port = parts.port or 3128
    except ValueError:
        raise DXFInputError('proxy %s has a bad port' % _printable(
            parts.netloc.rpartition('@')[2])) from None
    return parts.hostname, port, headers


def _in_network(host, network):
    """True for an IP address ``host`` inside ``network`` (10.0.0.0/8), as
    curl and Go read such no_proxy entries."""
    import ipaddress
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(
            network, strict=False)
    except ValueError:
        return False


def _netloc(host, port):
    host = '[%s]' % host if ':' in host else host
    return host if port is None else '%s:%d' % (host, port)


def _port(url):
    """The port a URL names, or None; a bad one is the response's fault."""
    try:
        return urllib.parse.urlsplit(url).port
    except ValueError:
        raise DXFProtocolError('bad port in %r' % _printable(url, 200),
                               url=url) from None


def _origin(url):
    """``(scheme, host, port)``: what decides where credentials may go."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        raise DXFProtocolError('bad URL %r' % _printable(url, 200),
                               url=url) from None
    port = _port(url) or (443 if parts.scheme == 'https' else 80)
    return parts.scheme, (parts.hostname or '').lower(), port


# =============================================================================
# 6. Authentication
#    WWW-Authenticate challenges; HTTP Basic; the Bearer token flow of
#    distribution's token spec with a token cache keyed by scope.
# =============================================================================


def _token_response(body, netloc):
    """``(token, seconds it lives)`` from a token service's JSON response."""
    try:
        doc = json.loads(body.decode('utf-8'))
    except (ValueError, RecursionError):
        doc = None
    if not isinstance(doc, dict):
        raise DXFAuthError('token service %s answered something that is '
                           'not a JSON object' % _printable(netloc))
    # ACR sends only access_token; Harbor sends an empty access_token
    # beside a good token (python-dxf #22, #27).
    token = doc.get('access_token') or doc.get('token')
    if not isinstance(token, str) or not token:
        raise DXFAuthError('token service %s answered without a token'
                           % _printable(netloc))
    if not _TOKEN_RE.match(token):
        raise DXFAuthError('token service %s sent a token that cannot go '
                           'in a header' % _printable(netloc))
    expires_in = doc.get('expires_in')
    if (isinstance(expires_in, bool) or not isinstance(
            expires_in, (int, float)) or not expires_in >= 60):
        expires_in = 60       # the token spec's default and minimum
    expires_in = min(expires_in, _MAX_TOKEN_LIFE)
    return token, expires_in


class _Auth:
    """One registry's credentials and tokens, and where they may go.

    The request layer asks ``authorization(url, scope)`` for the Authorization to
    send and hands a 401 to ``login``.  The trust rules live here alone:
    credentials (password, token, identity token, a raw Authorization) go
    only to the registry's own origin (scheme, host, port) and, for the
    token request, to the token realm's; never over plain http to a host
    other than the loopback unless ``allow_insecure``; challenges are taken
    only from the registry's origin.  DXF objects made with from_base()
    share one _Auth.
    """

    def __init__(self, transport, base, auth_host=None, allow_insecure=False):
        self.transport = transport
        self.base = base
        self.origin = _origin(base)
        self.auth_host = auth_host
        self.allow_insecure = allow_insecure
        self.lock = threading.Lock()
        self.fetching = threading.Lock()   # one token request at a time
        self.tokens = {}          # scope -> (token, renew_at)
        self.token = None         # the newest token (DXFBase.token)
        self.fixed_token = None   # set by the user: used for every request
        self.basic = None         # 'Basic ...' once the registry asked for it
        self.challenge = None     # (realm, service) of the Bearer challenge
        self.creds = None         # Authorization for the token service, or ''
        self.refresh_token = None  # an identity token (OAuth2 refresh token)

    def check_secure(self, url, what):
        """Refuse to send credentials to ``url`` over plain http."""
        parts = urllib.parse.urlsplit(url)
        if (parts.scheme != 'https' and not _is_loopback(parts.hostname or '')
                and not self.allow_insecure):
            raise DXFAuthInsecureError(
                'not sending credentials over plain http to %s (%s); use '
                'https, or opt in with DXF_ALLOW_INSECURE_AUTH=1 '
                '(allow_insecure_auth=True)' % (_printable(parts.netloc), what))

    def is_registry_url(self, url):
        """True for a URL of the registry's origin.  The registry's host
        over plain http when the registry is https is refused outright."""
        origin = _origin(url)
        if origin == self.origin:
            return True
        if (origin[1] == self.origin[1] and origin[0] == 'http'
                and self.origin[0] == 'https'):
            raise DXFProtocolError('registry sent %s: refusing to downgrade '
                                   'from https to plain http'
                                   % _printable(url, 200), url=url)
        return False

    def authorization(self, url, scope):
        """The Authorization value for a request to ``url``, or None."""
        if not self.is_registry_url(url):
            return None        # e.g. an upload Location on a storage host
        value = self._value(scope)
        if value:
            self.check_secure(url, 'registry')
        return value

    def _value(self, scope):
        if self.basic:
            return self.basic
        if self.fixed_token:
            return 'Bearer ' + self.fixed_token
        if scope:
            cached = self._cached_token(scope)
            if cached:
                return 'Bearer ' + cached
            # The realm is known and so are the credentials: fetch the token
            # now instead of waiting for the registry's 401.
            if self.challenge and self.creds is not None:
                return 'Bearer ' + self.fetch_token(scope, refused='')
        return 'Bearer ' + self.token if self.token else None

    def _cached_token(self, scope):
        """A fresh cached token for ``scope``, or for a wider scope."""
        now = time.time()
        with self.lock:
            cached = self.tokens.get(scope)
            if cached and cached[1] > now:
                return cached[0]
            kind, _, rest = scope.rpartition(':')
            wanted = set(rest.split(','))
            for other, (token, renew_at) in self.tokens.items():
                okind, _, orest = other.rpartition(':')
                if (okind == kind and renew_at > now
                        and wanted <= set(orest.split(','))):
                    return token
        return None

    def fetch_token(self, scope, refused=None):
        """A token for ``scope`` from the token service.  One request at a
        time: threads that met a 401 together (parallel transfers, the
        existence check beside an upload) take the token another fetched
        meanwhile instead of asking again.  ``refused`` is the Authorization
        the 401 answered ('' when none was sent): any fresh token but that
        one is good; None asks the token service whatever is cached."""
        with self.fetching:
            if refused is not None:
                cached = self._cached_token(scope)
                if cached and 'Bearer ' + cached != refused:
                    return cached
            return self._fetch_token(scope)

    def _post_refresh_token(self, parts, scope, service):
        """The OAuth2 response to an identity token, or None where the token
        service has no such flow."""
        # An identity token (docker login's "identitytoken") is an OAuth2
        # refresh token: POST it, never following a redirect with it;
        # token servers without the OAuth2 flow answer 404/405, then the
        # GET flow takes it as a password.
        post_url = urllib.parse.urlunsplit(parts)
        self.check_secure(post_url, 'token service')
        form = [('grant_type', 'refresh_token'),
                ('refresh_token', self.refresh_token),
                ('client_id', 'dxf.py'), ('scope', scope or '')]
        if service:
            form.append(('service', service))
        resp = self.transport.request(
            'POST', post_url,
            {'Content-Type': 'application/x-www-form-urlencoded'},
            urllib.parse.urlencode(form).encode('ascii'),
            read=_MAX_SMALL_BODY, what='token answer', redirects=False)
        if resp.status in _REDIRECTS:
            raise DXFAuthError('token service %s redirected the identity '
                               'token request; not following it'
                               % _printable(parts.netloc))
        return None if resp.status in (404, 405) else resp

    def _fetch_token(self, scope):
        realm, service = self.challenge
        parts = urllib.parse.urlsplit(realm)
        if self.auth_host:
            parts = parts._replace(netloc=self.auth_host)
        query = urllib.parse.parse_qsl(parts.query)
        if service:
            query.append(('service', service))
        query += [('scope', one) for one in (scope or '').split()]
        url = urllib.parse.urlunsplit(
            parts._replace(query=urllib.parse.urlencode(query)))
        resp = None
        if self.refresh_token:
            resp = self._post_refresh_token(parts, scope=scope, service=service)
        if resp is None:
            headers = {}
            if self.creds:
                self.check_secure(url, 'token service')
                headers['Authorization'] = self.creds
            resp = self.transport.request('GET', url, headers,
                                          read=_MAX_SMALL_BODY,
                                          what='token answer')
        body = resp.read()
        if resp.status in (401, 403):
            exc = DXFUnauthorizedError(resp.method, url, resp.status, _registry_errors(body),
                                       'token service refused the credentials')
            exc.registry = urllib.parse.urlsplit(self.base).netloc   # whose realm
            raise exc
        if resp.status != 200:
            raise DXFAuthError('token service %s answered %d %s' % (
                _printable(parts.netloc), resp.status, _printable(resp.reason)))
        token, expires_in = _token_response(body, netloc=parts.netloc)
        with self.lock:
            self.tokens[scope] = (token, time.time() + expires_in - _TOKEN_MARGIN)
            self.token = token
        return token

    def check_challenger(self, response):
        """A 401 from another origin (where a redirect or a Location led)
        is an error naming it: its challenge is never answered."""
        if not self.is_registry_url(response.url):
            raise DXFAuthError('%s answered 401 but is not the registry: '
                               'dxf sends credentials only to %s' % (
                                   _printable(urllib.parse.urlsplit(
                                       response.url).netloc), self.origin[1]))

    def login(self, creds, response, scope, fallback=None):
        """Answer the registry's 401 ``response`` with ``creds`` (an
        Authorization value, '' or None for anonymous) for ``scope`` (else
        the challenge's, else ``fallback``).  Returns ``(token, None)`` for
        a Bearer challenge, ``(None, 'basic')`` for Basic."""
        self.check_challenger(response)
        challenges = _parse_www_authenticate(response.header('WWW-Authenticate'))
        bearer = [p for s, p in challenges if s == 'bearer']
        if bearer:
            params = bearer[0]
            realm = params.get('realm') or ''
            try:
                scheme, host, _ = _origin(realm)
            except DXFProtocolError:
                scheme = host = None
            if scheme not in ('http', 'https') or not host:
                raise DXFAuthError('registry sent a Bearer challenge without '
                                   'a usable realm')
            with self.lock:
                # New credentials never take a token fetched with the old.
                refused = (getattr(self.transport.local, 'challenged', (None, None))[1]
                           if self.creds == (creds or '') else None)
                self.challenge = (realm, params.get('service'))
                self.creds = creds or ''
            return self.fetch_token(scope or params.get('scope') or fallback,
                                    refused), None
        if any(s == 'basic' for s, _ in challenges):
            if creds:
                self.check_secure(self.base, 'registry')
                self.basic = creds
            return None, 'basic'
        if not challenges:
            raise DXFAuthError('registry answered 401 without a usable '
                               'WWW-Authenticate challenge')
        raise DXFAuthError('registry wants %s authentication, which dxf does '
                           'not support' % _printable(challenges[0][0]))


def _basic(username, password):
    return 'Basic ' + base64.b64encode(('%s:%s' % (
        username, password or '')).encode('utf-8')).decode('ascii')


def _docker_config(host, environ):
    """``(path, config ({} if none), lookup, the credential helper (or None)
    and the server name to give it)``; ``lookup(table)`` is ``(key, value)``
    of host's entry in a config table.  Per-host ``credHelpers`` come
    before ``credsStore`` (as docker and oras read them)."""
    directory = environ.get('DOCKER_CONFIG') or os.path.join(
        environ.get('HOME') or os.path.expanduser('~'), '.docker')
    path = os.path.join(directory, 'config.json')
    try:
        with open(path, 'rb') as f:
            config = json.loads(f.read().decode('utf-8'))
    except FileNotFoundError:
        config = {}
    except (OSError, ValueError, RecursionError) as exc:
        raise DXFInputError('cannot read %s: %s' % (path, _exc_text(exc)))
    if not isinstance(config, dict):
        raise DXFInputError('%s is not a JSON object' % path)
    names = [host.lower()]
    server = host
    if _is_docker_hub(host):
        names.append('index.docker.io/v1')
        # docker login stores Hub credentials under this key, and docker
        # asks helpers for it (ResolveAuthConfig in docker/cli's
        # cli/command/registry.go: registry.IndexServer).
        server = 'https://index.docker.io/v1/'

    def lookup(table):
        if isinstance(table, dict):
            for key, value in table.items():
                bare = re.sub(r'^[a-z]+://', '', key.lower()).rstrip('/')
                if bare in names or bare.split('/')[0] == names[0]:
                    return key, value
        return None, None
    key, helper = lookup(config.get('credHelpers'))
    helper = helper or config.get('credsStore')
    return (path, config, lookup, helper if isinstance(helper, str) and helper else None,
            key or server)


def _docker_config_store(host, environ, username=None, secret=None):
    """dxf login (``username``) or logout: store or erase host's credentials
    with the config's credential helper, else in ``auths``; config.json is
    replaced atomically, mode 0600, keeping every key dxf does not know."""
    path, config, lookup, helper, server = _docker_config(host, environ)
    if not (username or config):
        return           # logout with no config: nothing to erase, no file to make
    auths = config.setdefault('auths', {})
    key = lookup(auths)[0] or server
    if helper:
        _credential_helper(helper, server, environ, action='store' if username else 'erase',
                           data=username and json.dumps(
                               {'ServerURL': server, 'Username': username, 'Secret': secret}))
    auths.pop(key, None)
    if username:     # with a helper, docker too leaves an empty entry
        auths[key] = {} if helper else {'auth': _basic(username, secret)[len('Basic '):]}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic = _AtomicFile(path)
    with atomic as f:
        os.chmod(atomic.tmp, 0o600)        # before a secret is in it
        f.write(json.dumps(config, indent='\t').encode('utf-8'))


def _docker_config_credentials(host, environ):
    """Credentials for ``host`` from docker's config.json, or None.

    Returns ``(username, secret)``; username ``'<token>'`` means the secret
    is an identity token.  The credential helper comes first, then inline
    ``auths`` entries (as docker and oras do).
    """
    path, config, lookup, helper, server = _docker_config(host, environ)
    if helper:
        found = _credential_helper(helper, server, environ)
        if found:
            return found
    _, entry = lookup(config.get('auths'))
    if not isinstance(entry, dict):
        return None
    if entry.get('identitytoken'):
        return '<token>', entry['identitytoken']
    if entry.get('auth'):
        try:
            user, _, password = base64.b64decode(entry['auth']).decode(
                'utf-8').partition(':')
        except (ValueError, UnicodeDecodeError):
            raise DXFInputError('%s: malformed "auth" for %s' % (path, host))
        return user, password
    if entry.get('username'):
        return entry['username'], entry.get('password', '')
    return None


def _credential_helper(name, server, environ, action='get', data=None):
    """Ask ``docker-credential-<name> get`` for ``server``'s credentials (or
    run its ``store``/``erase`` with ``data``)."""
    import subprocess
    program = 'docker-credential-' + name
    try:
        done = subprocess.run([program, action], input=(data or server).encode('utf-8'),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=dict(environ), timeout=60)
    except (OSError, subprocess.SubprocessError) as exc:
        raise DXFAuthError('credential helper %s failed: %s'
                           % (program, _exc_text(exc))) from exc
    if done.returncode != 0:
        if b'credentials not found' in done.stdout + done.stderr:
            return None      # the helper's "no entry", not an error
        raise DXFAuthError('credential helper %s failed: %s' % (
            program, _printable((done.stderr or done.stdout).decode(
                'utf-8', 'replace').strip().split('\n')[0])))
    if action != 'get':
        return None
    try:
        doc = json.loads(done.stdout.decode('utf-8'))
        return doc['Username'], doc['Secret']
    except (ValueError, RecursionError, KeyError, TypeError):
        raise DXFAuthError('credential helper %s answered something that is '
                           'not its JSON' % program) from None


def _http_error(response, body=b'', expected=None):
    """The DXFHTTPError subclass for a response with an unexpected status."""
    cls = {401: DXFUnauthorizedError, 403: DXFUnauthorizedError,
           404: DXFHTTPNotFoundError}.get(response.status, DXFHTTPError)
    return cls(response.method, response.url, response.status,
               _registry_errors(body), response.reason, expected)


# =============================================================================
# 7. Blob streams
#    BlobReader hands out a blob's bytes, hashing as they pass and holding the
#    last piece back until the digest (and size) check out.
# =============================================================================


class _HashThread:
    """Hashes buffers in a second thread; hashlib releases the GIL for large
    buffers, so receiving and writing go on meanwhile.  ``free`` hands out
    the buffers, which come back once hashed."""

    def __init__(self, h, count, size):
        import queue
        self._h = h
        self._work = queue.Queue()
        self.free = queue.Queue()
        for _ in range(count):
            self.free.put(bytearray(size))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while True:
            item = self._work.get()
            try:
                if item is None:
                    return
                buf, n = item
                self._h.update(memoryview(buf)[:n])
                self.free.put(buf)
            finally:
                self._work.task_done()

    def put(self, buf, n):
        self._work.put((buf, n))

    def drain(self):
        """Wait until every buffer handed over is hashed."""
        self._work.join()

    def stop(self):
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()


def _start_writeback(out, start, end):
    """Have the kernel start writing a file's new pages to disk now, so the
    fsync at the end has little left to do.  Returns where the next call
    starts (a huge number where the file cannot do this, e.g. a pipe)."""
    try:
        out.flush()
        os.posix_fadvise(out.fileno(), start, end - start,
                         os.POSIX_FADV_DONTNEED)
        return end
    except (AttributeError, ValueError, OSError):
        return 1 << 62


def _write_all(out, data):
    """out.write, looping on short writes (an unbuffered stdout may take
    less than it is given)."""
    view = memoryview(data)
    while view:
        n = out.write(view)
        if n is None or n >= len(view):
            return
        view = view[n:]


def _content_range(resp, digest, start, end, size):
    """The blob's size from a 206 response to bytes ``start`` to before ``end``
    (None: the end), refused unless it is that range of a blob of ``size``."""
    m = re.match(r'bytes (\d+)-(\d+)/(\d+)\Z', resp.header('Content-Range') or '')
    total = m and int(m.group(3))
    if m and resp.status == 206 and size in (None, total) and (int(m.group(1)), int(
            m.group(2))) == (start, min(end or total, total) - 1):
        return total
    resp.close()
    raise DXFProtocolError('blob %s: refusing answer %d with Content-Range %r to a '
                           'request from byte %d' % (digest, resp.status, _printable(
                               resp.header('Content-Range'), 80), start), 'GET', resp.url)


class BlobReader:
    """An iterator over a blob's bytes, verified against its digest.

    Iterate for chunks of ``chunk_size`` bytes, or call ``read(n)``.  The
    final bytes are returned only once the whole blob has hashed to
    ``digest``; otherwise DXFDigestMismatchError (or DXFSizeMismatchError) is
    raised instead.  ``size`` is the blob's length when the registry said it.
    A connection that breaks mid-blob is resumed with a range request.
    ``response`` may start at ``offset``, the bytes before it in ``hashed``.
    """

    def __init__(self, response, digest, chunk_size=None, progress=None,
                 expected_size=None, reopen=None, budget=None, offset=0,
                 hashed=None):
        self.digest = digest
        self.size = None if response.length is None else offset + response.length
        self.chunk_size = chunk_size or _DEFAULT_PULL_CHUNK
        self._copy_size = chunk_size or _CHUNK_SIZE
        if (expected_size is not None and self.size is not None
                and self.size != expected_size):
            response.close()
            raise DXFSizeMismatchError(self.size, expected_size,
                                       'blob %s' % digest)
        if self.size is None:
            self.size = expected_size
        self._resp = response
        self._hash = hashed or _Hasher.like(digest)
        self._progress = progress
        self._done = offset
        self._ahead = None        # look-ahead piece when the size is unknown
        self._finished = False
        self._reopen = reopen     # reopen(offset) -> response from offset
        self._budget = budget     # a _Budget for resumes, or None
        if progress:
            progress(digest, b'', self.size)

    def __iter__(self):
        return self

    def __next__(self):
        chunk = self.read(self.chunk_size)
        if not chunk:
            raise StopIteration
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Stop reading; the connection is dropped if bytes remain."""
        self._finished = True
        self._resp.close()

    def _raw(self, n):
        """Up to n bytes from the body, b'' only at its end."""
        try:
            return self._resp.chunk(n)
        except DXFConnectionError as exc:
            raise DXFConnectionError('blob %s: connection broke after %d '
                                     'bytes (%s)' % (self.digest, self._done,
                                                     exc), exc.method,
                                     exc.url) from exc

    def _may_resume(self):
        return (self._reopen is not None and self._budget is not None
                and self._budget.retry(None, also=(None,)))   # broke or cut short

    def read(self, n=-1):
        """Return up to ``n`` bytes (all that remain if ``n`` < 0)."""
        if self._finished:
            return b''
        if n is None or n < 0:
            return b''.join(iter(lambda: self.read(_CHUNK_SIZE), b''))
        if self.size is not None:
            want = min(n, self.size - self._done)
            data = self._read_resuming(want) if want else b''
            last = self._done + len(data) >= self.size
        else:
            data = self._ahead if self._ahead is not None else self._raw(n)
            self._ahead = self._raw(n) if data else b''
            last = not self._ahead
        self._done += len(data)
        self._hash.update(data)
        if last:
            self._verify()
        if self._progress and data:
            self._progress(self.digest, data, self.size)
        return data

    def _read_resuming(self, want, into=None, before_resume=None):
        """Up to ``want`` (> 0) bytes (or into the buffer ``into``, returning
        the count), resuming the download if it breaks."""
        while True:
            try:
                data = (self._raw(want) if into is None
                        else self._resp.chunk(want, into))
            except DXFConnectionError:
                self._resp.close()
                if not self._may_resume():
                    raise
                data = None
            if data:
                return data
            if data is not None and not self._may_resume():
                # The body ended before the size the registry gave.
                self.close()
                raise DXFSizeMismatchError(self._done, self.size,
                                           'blob %s' % self.digest)
            if before_resume:
                before_resume()
            self._resume()

    def copy_to(self, out):
        """Write the rest of the blob to the binary file ``out``, verified.

        Faster than iterating: receiving and writing overlap with hashing,
        which runs in a second thread.  As with iteration, the last piece
        is written only once the digest checks out.
        """
        if self._finished:
            return
        # Without a chunk_size of the caller's, 1 MiB pieces; pipelined,
        # 64 to 512 KiB (python-dxf's 8 KiB default took twice as long).
        size = self._copy_size
        if self.size is None or self.size - self._done < _PIPELINE_MIN:
            for chunk in iter(lambda: self.read(size), b''):
                _write_all(out, chunk)
            return
        size = min(max(size, 64 << 10), _PIPELINE_PIECE)
        hasher = _HashThread(self._hash, _PIPELINE_BUFFERS, size)
        written_back = 0
        try:
            while True:
                buf = hasher.free.get()
                view = memoryview(buf)[:min(len(buf), self.size - self._done)]
                n = self._read_resuming(len(view), view, hasher.drain)
                self._done += n
                hasher.put(buf, n)
                if self._done >= self.size:    # the last piece: verify first
                    hasher.drain()
                    self._verify()
                _write_all(out, view[:n])
                if self._progress:
                    self._progress(self.digest, bytes(view[:n]), self.size)
                if self._done >= self.size:
                    return
                if self._done - written_back >= _WRITEBACK_EVERY:
                    written_back = _start_writeback(out, written_back,
                                                    self._done)
        finally:
            hasher.stop()
            if not self._finished:
                self.close()

    def _resume(self):
        """Continue from byte ``_done`` on a new request (RFC 9110 ranges)."""
        self._resp.close()
        resp = self._resp = self._reopen(self._done)
        if resp.status == 206:
            _content_range(resp, self.digest, self._done, None, self.size)
            return
        # A 200 starts over: read the prefix again and check it hashes the
        # same as the bytes already handed out.
        h = _Hasher.like(self.digest)
        left = self._done
        while left:
            piece = self._raw(min(left, _CHUNK_SIZE))
            if not piece:
                raise DXFSizeMismatchError(self._done - left, self.size,
                                           'blob %s' % self.digest)
            h.update(piece)
            left -= len(piece)
        if h.digest() != self._hash.digest():
            resp.close()
            raise DXFDigestMismatchError('(a different prefix)', self.digest)

    def _verify(self):
        self._finished = True
        if self.size is not None:
            # Anything beyond the declared size means the body is not the blob.
            extra = self._raw(1)
            if extra:
                self._resp.close()
                raise DXFSizeMismatchError(self._done + len(extra), self.size,
                                           'blob %s' % self.digest)
        self._resp.release()
        self._hash.verify(self.digest)


class _Source:
    """What an upload reads: bytes, a regular file, or a stream (a pipe, an
    iterable of bytes) that can be read only once.

    ``size`` and ``digest`` are known from the start for bytes and files
    (``measure`` hashes them), for a stream once it has ended.  ``piece``
    hands out any range of the bytes as a _FileBody: a stream is read
    ahead into an anonymous temporary file, one window at a time (gone
    whatever happens to the process), so a piece can be sent again, smaller
    after a 413 or after a broken connection, and no stream is ever read
    while a request body is in flight (an interrupt cannot cut one).
    """

    def __init__(self, f=None, data=None, digest=None):
        import stat
        self.digest, self.f, self.size, self.stream = digest, f, None, None
        if isinstance(data, (bytes, bytearray, memoryview)):
            self.f = io.BytesIO(data)
            self.size = len(self.f.getbuffer())
        elif data is not None:
            self.stream = iter(data)
        elif stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            self.size = os.fstat(f.fileno()).st_size
        else:
            self.stream = iter(lambda: f.read(_CHUNK_SIZE), b'')
        if self.stream is not None:
            import tempfile
            self.f = tempfile.TemporaryFile()
            self.hash = _Hasher.like(digest)
        self.base = self.end = 0      # the stream's bytes in self.f
        self.on_read = None           # a stream's progress: as it is read

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.stream is not None:
            self.f.close()

    def measure(self):
        """Hash a file (unless its digest was given) or bytes (checked)."""
        if self.stream is None and (self.digest is None
                                    or isinstance(self.f, io.BytesIO)):
            self.hash_again()

    def hash_again(self):
        """Hash the file from its start: the digest, checked if given."""
        self.f.seek(0)
        self.digest = _Hasher.like(self.digest).feed(self.f).verify(self.digest)

    def can_restart(self):
        """Whether a new upload session can start from byte 0."""
        return self.base == 0

    def piece(self, offset, n, on_data=None):
        """A body of up to ``n`` bytes from ``offset``; None at the end."""
        if self.stream is not None and self.size is None and offset + n > self.end:
            self._read_ahead(offset, n)
        left = (self.end if self.size is None else self.size) - offset
        if left <= 0 and offset:
            return None
        self.f.seek(offset - self.base)
        return _FileBody(self.f, min(n, left), on_data)

    def _read_ahead(self, offset, n):
        """Read the stream until the window holds ``offset`` to ``offset + n``
        (or the stream ends: then size and digest are known)."""
        if not self.base <= offset <= self.end:
            raise DXFProtocolError('the registry lost bytes of a stream '
                                   'already sent; they cannot be read again')
        if offset == self.end:      # all sent: a new window
            self.f.seek(0)
            self.f.truncate()
            self.base = offset
        self.f.seek(self.end - self.base)     # else the window grows
        while self.end < offset + n:
            chunk = next(self.stream, None)
            if chunk is None:
                self.size = self.end
                self.digest = self.hash.verify(self.digest)
                break
            _check_stop()
            self.hash.update(chunk)
            self.f.write(chunk)
            self.end += len(chunk)
            if self.on_read and chunk:
                self.on_read(self.digest, chunk, None)
        self.f.flush()


# =============================================================================
# 8. Manifests
#    The manifest that backs an alias, and reading every kind users meet:
#    OCI manifests and indexes, Docker schema-2 manifests and manifest lists
#    (python-dxf's aliases among them).  Manifests stay bytes as on the wire.
# =============================================================================


def _descriptor(media_type, digest, size, annotations=None):
    desc = {'mediaType': media_type, 'digest': digest, 'size': size}
    if annotations:
        desc['annotations'] = annotations
    return desc


def _alias_manifest(layers, annotations=None, artifact_type=None, config=None,
                    subject=None):
    """The bytes of the OCI manifest backing an alias over ``layers``; the
    rest as for make_manifest, ``subject`` a descriptor (image-spec 1.1).
    No timestamp: the same inputs give the same digest (oras#1367)."""
    extra = _checked_annotations(annotations)
    path, media = config or (None, _EMPTY_TYPE)
    config = _descriptor(media or _UNKNOWN_CONFIG_TYPE, *(
        (hash_file(path), os.path.getsize(path)) if path else (
            _EMPTY_DIGEST, len(_EMPTY_BLOB))), annotations=extra.pop('$config', None))
    manifest = {'schemaVersion': 2, 'mediaType': _OCI_MANIFEST, 'config': config,
                'layers': layers}
    # A config of its own says what the artifact is (its media type), as
    # oras writes it; the empty config needs artifactType to.
    if artifact_type or not path:
        manifest['artifactType'] = artifact_type or _ALIAS_ARTIFACT_TYPE
    for media in (artifact_type, config['mediaType']):
        if media is not None and not _MEDIA_TYPE_RE.match(media):
            raise DXFInputError('invalid media type %r' % _printable(media))
    notes = extra.pop('$manifest', None)
    for layer in layers:
        title = (layer.get('annotations') or {}).get(_TITLE_ANNOTATION)
        if title in extra:
            layer['annotations'] = dict(layer['annotations'], **extra.pop(title))
    if extra:
        raise DXFInputError('annotations for %s, which is not a file given'
                            % _printable(sorted(extra)[0]))
    manifest.update(kv for kv in (('annotations', notes), ('subject', subject)) if kv[1])
    return json.dumps(manifest, sort_keys=True).encode('utf-8')


def _checked_annotations(annotations):
    """A copy of oras's annotation-file map, checked: ``{"$manifest" |
    "$config" | file name: {"key": "value", ...}}``."""
    extra = annotations or {}
    if not isinstance(extra, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) and all(isinstance(
                x, str) for x in sum(v.items(), ())) for k, v in extra.items()):
        raise DXFInputError('annotations must map $manifest, $config or a '
                            'file name to {"key": "value", ...}')
    return dict(extra)


def _referrers_tag(digest):
    """The tag of a subject's fallback referrers index (distribution-spec
    1.1 "Referrers Tag Schema"): algorithm truncated to 32 characters, '-',
    encoded part truncated to 64, characters a tag cannot hold as '-'."""
    algorithm, _, encoded = digest.partition(':')
    return re.sub(r'[^A-Za-z0-9._-]', '-', algorithm[:32] + '-' + encoded[:64])


def _referrer_entry(data, m, media):
    """A referrer's entry in a referrers index ("Pushing Manifests with
    Subject"): artifactType (else the config's media type), annotations."""
    entry = _descriptor(media, hash_bytes(data), len(data), m.get('annotations'))
    kind = m.get('artifactType') or (m.get('config') or {}).get('mediaType')
    return dict(entry, artifactType=kind) if isinstance(kind, str) and kind else entry


def _parse_manifest(data, content_type=None):
    """``(manifest dict, media type)``; the type from the body or the header."""
    m = _load_json(data, 'manifest')
    if not isinstance(m, dict):
        raise DXFManifestError('manifest is not a JSON object')
    media = m.get('mediaType') or (content_type or '').split(';')[0].strip()
    if m.get('schemaVersion') == 1 or media == _DOCKER_V1:
        raise DXFUnsupportedSchemaType(media or 'schema 1')
    if media not in _MANIFEST_TYPES + _INDEX_TYPES:
        # OCI allows mediaType to be left out; judge by the shape.
        if isinstance(m.get('manifests'), list):
            media = _OCI_INDEX
        elif isinstance(m.get('layers'), list):
            media = _OCI_MANIFEST
        else:
            raise DXFUnsupportedSchemaType(media or 'unknown')
    return m, media


def _manifest_to_store(manifest):
    """``(bytes, parsed, media type)`` of a manifest (str or bytes) to store."""
    data = manifest.encode('utf-8') if isinstance(manifest, str) else bytes(manifest)
    if len(data) > _MAX_MANIFEST:
        raise DXFInputError('manifest is larger than 4 MiB')
    m, media = _parse_manifest(data)
    return data, m, media


def _check_descriptor(desc):
    if (not isinstance(desc, dict) or not isinstance(desc.get('size'), int)
            or desc['size'] < 0):
        raise DXFManifestError('manifest has a malformed descriptor')
    try:
        split_digest(desc.get('digest'))
    except DXFInputError as exc:
        raise DXFManifestError('manifest names %s' % exc) from None
    return desc['digest'], desc['size']


def _manifest_layers(m):
    layers = m.get('layers')
    if not isinstance(layers, list):
        raise DXFManifestError('manifest has no layers list')
    return [_check_descriptor(d) for d in layers]


def _platform_name(platform):
    if not isinstance(platform, dict):
        return None
    parts = [platform.get('os'), platform.get('architecture')]
    if not all(isinstance(p, str) and p for p in parts):
        return None
    if isinstance(platform.get('variant'), str) and platform['variant']:
        parts.append(platform['variant'])
    return '/'.join(parts)


def _index_platforms(m):
    """``{'os/arch[/variant]': digest}`` of an index or manifest list."""
    entries = m.get('manifests')
    if not isinstance(entries, list):
        raise DXFManifestError('index has no manifests list')
    found = {}
    for entry in entries:
        digest, _ = _check_descriptor(entry)
        name = _platform_name(entry.get('platform'))
        if name and name not in found:   # entries without one (attestations)
            found[name] = digest
    return found


def _choose_platform(m, platform):
    platforms = _index_platforms(m)
    if platform in platforms:
        return platforms[platform]
    if platform:
        # 'linux/arm' picks 'linux/arm/v7' when that is the only variant.
        matches = [p for p in platforms if p.startswith(platform + '/')]
        if len(matches) == 1:
            return platforms[matches[0]]
    raise DXFPlatformDataNotFound(platform, sorted(platforms))


# =============================================================================
# 9. Registry client
#    DXFBase: one registry (auth, catalog, connections).  python-dxf names
#    are kept throughout the public classes.
# =============================================================================


def _ca_bundle_variable(environ):
    """python-dxf (requests) users' private CA: REQUESTS_CA_BUNDLE, then
    CURL_CA_BUNDLE, as requests reads them; (name, path) or None."""
    for name in ('REQUESTS_CA_BUNDLE', 'CURL_CA_BUNDLE'):
        if environ.get(name):
            return name, environ[name]
    return None


def _name_unresolved(exc, url, proxies):
    """Say which host a DNS failure is about ("Name or service not known"
    names none): the registry's, unless a proxy stands in front of it."""
    import socket
    if not isinstance(exc.__cause__, socket.gaierror):
        return
    parts = urllib.parse.urlsplit(url)
    if _proxy_for(proxies, parts.scheme, parts.hostname or '', parts.port):
        return
    exc.args = ('cannot resolve %s (%s)' % (parts.hostname, exc),)


def _data_progress(progress):
    """python-dxf's callback for ``push_blob(data=...)``: ``progress(digest,
    chunk)`` for each non-empty chunk, no start call and no total (files get
    ``progress(digest, b'', total)`` first, then ``(digest, chunk, total)``)."""
    if progress is None:
        return None

    def report(digest, chunk, total=None):
        if chunk:
            progress(digest, chunk)
    return report


def _check_echo(resp, digest=None, data=None):
    """Return the registry's Docker-Content-Digest, checked: the digest of
    ``data`` in its algorithm, else ``digest`` where that uses the same one
    (another's cannot be compared)."""
    echoed = resp.header('Docker-Content-Digest')
    if echoed and data is not None:
        _Hasher.like(echoed, data).verify(echoed)
    elif echoed and echoed.partition(':')[0] == digest.partition(':')[0]:
        _verify(echoed, digest)
    return echoed


class DXFBase:
    """A Docker / OCI registry.

    :param host: registry host, optionally with ``:port``
    :param auth: ``auth(dxf, response)`` called on a 401; it is expected to
        call ``dxf.authenticate(..., response=response)``.  Without one, dxf
        authenticates anonymously (or with the credentials of an earlier
        ``authenticate`` call)
    :param insecure: use plain http instead of https
    :param auth_host: host to use instead of the token realm's
    :param tlsverify: False to skip certificate checks, or a CA bundle path;
        True (the default) takes ``REQUESTS_CA_BUNDLE`` or ``CURL_CA_BUNDLE``
        from ``os.environ`` (as python-dxf, through requests, does), read
        here once, else the system's store
    :param timeout: seconds a response may take: its headers, a small
        response whole, each MiB of a blob (default 60)
    :param allow_insecure_auth: allow credentials over plain http to a host
        that is not the loopback
    :param retries: how many times a failed request is tried again (5)
    :param proxies: where to read ``http_proxy``, ``https_proxy`` and
        ``no_proxy`` from (default ``os.environ``)
    :param cert: ``(certfile, keyfile or None)``: for the registry's origin only
    """

    def __init__(self, host, auth=None, insecure=False, auth_host=None,
                 tlsverify=True, timeout=None, allow_insecure_auth=False,
                 retries=None, proxies=None, cert=None):
        for what, value in (('registry host', host), ('auth host', auth_host)):
            m = _HOST_RE.match(value) if isinstance(value, str) else None
            if (value is not None or what == 'registry host') and (
                    not m or int(m.group('port') or 0) > 65535):
                raise DXFInputError('invalid %s %r (host[:port] expected)'
                                    % (what, _printable(value)))
        self._host = host
        self._insecure = insecure
        self._base = '%s://%s/v2/' % ('http' if insecure else 'https', host)
        self._auth = auth
        self._tlsverify = tlsverify    # as given (python-dxf code reads it)
        bundle = _ca_bundle_variable(os.environ) if tlsverify is True else None
        if bundle:
            tlsverify = bundle[1]
        self._transport = _Transport(tlsverify, timeout, retries, proxies)
        self._transport.cert = cert and (tuple(cert), _origin(self._base))
        self._credentials = _Auth(self._transport, self._base, auth_host,
                                  allow_insecure_auth)
        self._repo = None

    def _share(self, base):
        """Use ``base``'s registry, connections, credentials and tokens."""
        for name in ('_host', '_insecure', '_base', '_auth', '_tlsverify',
                     '_transport', '_credentials'):
            setattr(self, name, getattr(base, name))
        self._repo = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close idle keep-alive connections (they reopen when needed)."""
        self._transport.close()

    @property
    def token(self):
        """The bearer token in use; set it to use a token obtained elsewhere."""
        return self._credentials.fixed_token or self._credentials.token

    @token.setter
    def token(self, value):
        self._credentials.fixed_token = value

    # -- authentication ------------------------------------------------------

    def _scope(self, actions):
        """The token scope a request to this repository needs.

        It also asks for what the rest of the operation will need (see
        _Operation), so one token serves the whole operation.
        """
        if actions is None:
            return None
        wanted = set(actions) | self._transport.current().actions
        return 'repository:%s:%s' % (self._repo, ','.join(
            a for a in _ACTIONS if a in wanted))

    def _needing(self, *actions):
        """A context in which requests ask for ``actions`` too, and share one
        retry budget."""
        return self._transport.operation(*actions)

    def _handle_401(self, response, scope, sent):
        """Let the auth callback (or the stored credentials) answer a 401
        to a request that carried the Authorization ``sent`` (or None)."""
        auth, local = self._credentials, self._transport.local
        local.challenged = (scope, sent or '')
        try:
            if self._auth is not None:
                self._auth(self, response)
            elif not auth.fixed_token:
                self._login(auth.creds or None, None, response)
        finally:
            local.challenged = (None, None)

    def authenticate(self, username=None, password=None, actions=None,
                     response=None, authorization=None, identity_token=None):
        """Authenticate to the registry; return the bearer token, if any.

        With no ``response``, first asks ``/v2/`` whether authentication is
        needed (None when it is not).  A Bearer challenge fetches a token from
        the token service (anonymously when no credentials are given); a
        Basic challenge stores the credentials for every later request.

        :param actions: e.g. ``['pull', 'push']``; defaults to what the
            challenge (or the operation in progress) asks for
        :param authorization: a raw ``Authorization`` value instead of
            username and password
        :param identity_token: an OAuth2 refresh token (``docker login``'s
            identity token) instead of username and password
        :raises DXFAuthInsecureError: credentials would go over plain http
        :raises DXFUnauthorizedError: the credentials were refused
        """
        creds = authorization
        if creds is None and username is not None:
            creds = _basic(username, password)
        elif creds is None and identity_token:
            creds = _basic('<token>', identity_token)
        if creds:
            self._credentials.check_secure(self._base, 'registry')
        self._credentials.refresh_token = identity_token
        return self._login(creds, actions, response)

    def _login(self, creds, actions, response):
        probed = response is None
        if probed:
            response = self._transport.request('GET', self._base)
            body = response.read()
            if response.status == 200:
                return None
            if response.status != 401:
                raise _http_error(response, body, expected=401)
        # What the caller asked for, else what the operation in progress
        # needs, else what the registry asked for; gcr.io sends no scope
        # for _catalog.
        scope = self._scope(actions) if actions else getattr(
            self._transport.local, 'challenged', (None, None))[0]
        fallback = ('registry:catalog:*' if self._repo is None
                    else self._scope(['pull']))
        token, kind = self._credentials.login(creds, response, scope, fallback)
        if kind == 'basic' and creds and probed:
            self._request('GET', '')     # say now whether they are good
        return token

    # -- requests --------------------------------------------------------------

    def _request(self, method, url, scope=None, headers=None, body=None,
                 ok=(200,), stream=False, limit=_MAX_SMALL_BODY):
        """Send one registry request with authentication.

        Returns the _Response (its body read into ``.body`` unless
        ``stream``); a status outside ``ok`` raises the matching DXFHTTPError.
        """
        if method != 'DELETE':      # an upload's cancel still goes out
            _check_stop()
        url = _join(self._base, url)
        if body is not None and not isinstance(body, _Body):
            body = _Body(bytes(body))
        for attempt in (0, 1):
            headers = dict(headers or {})
            authz = self._credentials.authorization(url, scope)
            if authz:
                headers['Authorization'] = authz
            try:
                resp = self._transport.request(
                    method, url, headers, body, read=None if stream else limit,
                    what='manifest' if limit == _MAX_MANIFEST else 'answer')
            except DXFConnectionError as exc:
                _name_unresolved(exc, url, self._transport.proxies)
                raise
            if resp.status == 401 and not self._credentials.is_registry_url(resp.url):
                resp.close()
                self._credentials.check_challenger(resp)
            if resp.status != 401 or attempt:
                break
            resp.read()
            self._handle_401(resp, scope, authz)
            if self._credentials.authorization(url, scope) == authz:
                break
            if body is not None:
                body.rewind()
        if resp.status not in ok:
            content = resp.read()
            error = _http_error(resp, content, expected=ok[0])
            error.response.headers = resp.headers
            error.response.content = content
            raise error
        resp.body = b'' if stream else resp.read()
        return resp

    def _paginate(self, url, key, scope, batch_size, kind=str):
        """Yield the items (of type ``kind``) of a paginated JSON list,
        following Link headers."""
        if batch_size:
            url += '?n=%d' % int(batch_size)
        url = urllib.parse.urljoin(self._base, url)
        seen = set()
        while url:
            seen.add(url)
            resp = self._request('GET', url, scope=scope)
            doc = _load_json(resp.body, '%s answer' % _path(url))
            items = doc.get(key) if isinstance(doc, dict) else None
            if items is None and isinstance(doc, dict):
                items = []            # distribution sends "tags": null
            if not isinstance(items, list) or not all(
                    isinstance(i, kind) for i in items):
                raise DXFManifestError('%s answer has no %s list'
                                       % (_path(url), key))
            for item in items:
                yield item
            nxt = _parse_link_next(resp.header('Link'))
            if not nxt:
                return
            nxt = _join(url, nxt)
            if _origin(nxt) != _origin(url):
                raise DXFProtocolError('registry sent a next-page link to '
                                       'another host')
            if nxt in seen or len(seen) >= _MAX_PAGES:
                raise DXFProtocolError('registry pagination does not end')
            url = nxt

    def list_repos(self, batch_size=None, iterate=False):
        """The repository names in the registry (its ``_catalog``).

        :param batch_size: page size to ask for
        :param iterate: return an iterator instead of a list
        """
        items = self._paginate('_catalog', 'repositories', 'registry:catalog:*',
                               batch_size)
        return items if iterate else list(items)

    def api_version_check(self):
        """GET ``/v2/``; return ``(body text, response)``."""
        resp = self._request('GET', '')
        return resp.body.decode('utf-8', 'replace'), resp


# =============================================================================
# 10. Alias operations
#    What every store does with blobs and aliases, over the primitives the
#    registry (DXF) and the OCI layout (OCILayout) each provide.
# =============================================================================


class _AliasMethods:
    """Aliases on top of a store's manifest and blob primitives.

    DXF (a registry repository) and OCILayout (a directory) both provide
    ``_get_manifest``, ``set_manifest``, ``_set_alias_manifest``,
    ``blob_size``, ``_blob_head``, ``push_blob`` and ``pull_blob``.
    """

    def _needing(self, *actions):
        return _Joined(threading.local(), None)    # no tokens, no retries

    def _manifest_for(self, alias, manifest=None, platform=None, index=False):
        """``(bytes, parsed)`` of an alias's manifest (or of ``manifest``, a
        str or bytes), an index resolved to its ``platform``'s manifest: the
        one rule for every operation (``index``: kept without a platform)."""
        if manifest is None:
            if alias is None:
                raise TypeError('give alias or manifest')
            data, content_type, _ = self._get_manifest(alias)
        else:
            data = manifest.encode('utf-8') if isinstance(manifest, str) else manifest
            content_type = None
        m, media = _parse_manifest(data, content_type)
        if media in _INDEX_TYPES and (platform or not index):
            if _REFERRERS_TAG_RE.match(alias or ''):
                raise DXFManifestError('%s is a referrers index (what is attached '
                                       'to a manifest): see dxf referrers' % alias)
            data, content_type, _ = self._get_manifest(_choose_platform(m, platform))
            m, media = _parse_manifest(data, content_type)
            if media in _INDEX_TYPES:
                raise DXFManifestError('nested index (an index of indexes) '
                                       'is not supported')
        return data, m

    def get_manifest(self, alias, platform=None):
        """Return an alias's manifest as a string, exactly as stored.

        For a multi-platform alias, ``platform`` (``'os/arch[/variant]'``)
        picks one platform's manifest; without it the index itself is
        returned.
        """
        return self._manifest_for(_check_ref(alias), platform=platform,
                                  index=True)[0].decode('utf-8')

    def make_manifest(self, *digests, names=None, artifact_type=None,
                      annotations=None, config=None):
        """Return the manifest (str) an alias over ``digests`` would store.

        :param names: file names, one per digest (or None), recorded as each
            layer's ``org.opencontainers.image.title`` (as oras does)
        :param artifact_type: default application/vnd.dxf.alias.v1 (none
            with a ``config``, ``(path, media type or None)``: that file)
        :param annotations: as in oras's ``--annotation-file``:
            ``{"$manifest": {...}, "$config": {...}, "<file name>": {...}}``
        """
        if not digests:
            raise DXFInputError('an alias needs at least one blob')
        names = list(names or ())
        names += [None] * (len(digests) - len(names))
        layers = []
        for digest, name in zip(digests, names):
            split_digest(digest)
            layers.append(_descriptor(_LAYER_TYPE, digest, self._layer_size(digest), {
                _TITLE_ANNOTATION: name} if name else None))
        return _alias_manifest(layers, annotations, artifact_type, config).decode(
            'utf-8')

    def _layer_size(self, digest):
        """A blob's size as pushed or asked for before, else asked for now."""
        size = self._sizes.get(digest)
        return self.blob_size(digest) if size is None else size

    def set_alias(self, alias, *digests, names=None, concurrency=None,
                  artifact_type=None, annotations=None, config=None):
        """Point ``alias`` at the blobs ``digests``; return the manifest stored.

        The blobs must already be in the repository (the ``config`` file is
        uploaded).  ``names`` and the rest as for make_manifest; the sizes
        are looked up ``concurrency`` (4) at a time.
        """
        _check_alias(alias)
        for digest in digests:
            split_digest(digest)
        with self._needing('push'):
            # The sizes not known yet are looked up together, not one round
            # trip after another, and the config blob with them.  With every
            # size known, the registry's refusal of the manifest for want of
            # the empty config (_set_alias_manifest) is the cheaper way to
            # find out whether it is there.
            unknown = sorted(set(digests) - set(self._sizes))
            if unknown or config:
                self._beside_config(self._blob_head, unknown, config, concurrency)
            manifest = self.make_manifest(
                *digests, names=names, artifact_type=artifact_type,
                annotations=annotations, config=config)
            self._set_alias_manifest(alias, manifest)
        return manifest

    def _beside_config(self, func, jobs, config, concurrency):
        """``[func(job) for job in jobs]``, in parallel with the push of a
        manifest's config blob (``config``'s file, else the empty config).

        The manifest needs that blob: looked for (and in a new repository
        uploaded) in the same batch as the rest, the manifest PUT is
        accepted the first time instead of after a 400 and a config upload.
        Each worker asks for the operation's token (pull and push), so the
        threads that meet the first 401 together share one token request
        (_Auth.fetch_token)."""
        def run(job):
            if job is not None:
                return func(job)
            if config:
                return self.push_blob(config[0])
            return self.push_blob(data=_EMPTY_BLOB, digest=_EMPTY_DIGEST)
        return self._parallel(run, [None] + list(jobs), concurrency)[1:]

    def _parallel(self, func, items, concurrency):
        """_in_parallel, ``concurrency`` (default 4) at a time, the workers
        drawing on the calling operation's retry budget."""
        return _in_parallel(func, items, concurrency or _DEFAULT_CONCURRENCY,
                            getattr(self, '_transport', None))

    def push_blobs(self, files, alias=None, progress=None, concurrency=None,
                   artifact_type=None, annotations=None, config=None,
                   descriptors=False, chunk_size=None):
        """Upload files and directories, several at a time; return their
        digests in the order given.

        :param files: paths of regular files (each one blob) or directories
            (each one gzip tar layer, as ``oras push`` stores them: the same
            content gives the same digest), or binary file objects (read to
            their end, e.g. ``sys.stdin.buffer``)
        :param alias: point this alias at them all, in order, each path's
            base name recorded as its title annotation
        :param progress: ``progress(digest, chunk, total)`` as for push_blob,
            called from several threads (each blob's calls from one thread,
            starting with ``b''``)
        :param concurrency: blobs in flight at once (default 4)
        :param artifact_type: for the alias's manifest, as for make_manifest;
            so are ``annotations`` and ``config``
        :param descriptors: return the layer descriptors, not the digests
        :param chunk_size: as for push_blob
        """
        items = list(files)
        if not items:
            raise DXFInputError('nothing to push')
        if alias is not None:
            _check_alias(alias)
        with self._needing('push'):
            if alias is None:
                layers = self._parallel(
                    lambda item: self._push_item(item, progress, chunk_size),
                    items, concurrency)
            else:
                layers, manifest = self._push_artifact(
                    items, progress, concurrency, artifact_type=artifact_type,
                    annotations=annotations, config=config, chunk_size=chunk_size)
                self._set_alias_manifest(alias, manifest.decode('utf-8'))
        return layers if descriptors else [layer['digest'] for layer in layers]

    def _push_artifact(self, items, progress, concurrency, artifact_type=None,
                       annotations=None, config=None, subject=None, chunk_size=None):
        """Push items (as push_blobs) and the config blob; return the layer
        descriptors and the manifest over them (not stored)."""
        layers = self._beside_config(
            lambda item: self._push_item(item, progress, chunk_size),
            items, config, concurrency)
        for layer in layers:
            if layer['size'] is None:
                layer['size'] = self._layer_size(layer['digest'])
        return layers, _alias_manifest(
            layers or [_descriptor(_EMPTY_TYPE, _EMPTY_DIGEST, len(_EMPTY_BLOB))],
            annotations, artifact_type, config, subject)

    def _push_item(self, item, progress, chunk_size=None):
        """Push one of push_blobs' items; return its layer descriptor."""
        if hasattr(item, 'read'):
            digest = self.push_blob(data=iter(lambda: item.read(_CHUNK_SIZE),
                                              b''), progress=progress,
                                    chunk_size=chunk_size)
            return _descriptor(_LAYER_TYPE, digest, self._sizes.get(digest))
        path = os.fspath(item)
        name = os.path.basename(os.path.normpath(os.path.abspath(path)))
        if not os.path.isdir(path):
            digest = self.push_blob(path, progress=progress,
                                    chunk_size=chunk_size)
            return _descriptor(_LAYER_TYPE, digest, self._sizes.get(digest),
                               {_TITLE_ANNOTATION: name})
        packed, tar_digest = _pack_directory(path, name)
        try:
            digest = self.push_blob(packed, progress=progress,
                                    chunk_size=chunk_size)
            size = os.stat(packed).st_size
        finally:
            os.unlink(packed)
        return _descriptor(_TAR_GZIP_TYPE, digest, size, {
            _TITLE_ANNOTATION: name, _TAR_DIGEST_ANNOTATION: tar_digest,
            _UNPACK_ANNOTATION: 'true'})

    def get_descriptors(self, alias=None, manifest=None, platform=None):
        """Return the layer descriptors (dicts with ``digest``, ``size``,
        ``mediaType`` and maybe ``annotations``) an alias names, in order."""
        m = self._manifest_for(alias, manifest, platform)[1]
        _manifest_layers(m)      # validates every descriptor
        return m['layers']

    def get_alias(self, alias=None, manifest=None, verify=True, sizes=False,
                  platform=None):
        """Return the blob digests an alias names, in order.

        :param manifest: a manifest (str) to read instead of fetching ``alias``
        :param verify: accepted for python-dxf compatibility (manifests are
            always verified against their digest)
        :param sizes: return ``(digest, size)`` pairs
        :param platform: ``'os/arch[/variant]'`` for a multi-platform alias
        """
        layers = _manifest_layers(self._manifest_for(alias, manifest, platform)[1])
        return layers if sizes else [d for d, _ in layers]

    def get_digest(self, alias=None, manifest=None, platform=None):
        """Return the digest of an alias's config blob (``docker inspect`` Id).

        For a dxf alias, as python-dxf documents it, the first blob's digest:
        python-dxf's aliases have the first blob as their config, and ours
        (the empty config, the same for every alias) follow suit.
        """
        m = self._manifest_for(alias, manifest, platform)[1]
        if m.get('artifactType') == _ALIAS_ARTIFACT_TYPE:
            layers = _manifest_layers(m)
            if layers:
                return layers[0][0]
        return _check_descriptor(m.get('config'))[0]

    def attach(self, subject, files=(), artifact_type=None, annotations=None,
               config=None, progress=None, concurrency=None):
        """Push files (as push_blobs, with its options) and a manifest whose
        ``subject`` is the manifest of ``subject`` (an alias or a digest):
        an OCI 1.1 referrer.  Return the new manifest's digest."""
        with self._needing('push'):
            data, content_type, digest = self._get_manifest(_check_ref(subject))
            manifest = self._push_artifact(
                list(files), progress, concurrency, artifact_type=artifact_type,
                annotations=annotations, config=config, subject=_descriptor(
                    _parse_manifest(data, content_type)[1], digest, len(data)))[1]
            self._put_referrer(manifest, digest)
        return hash_bytes(manifest)

    def referrers(self, subject, artifact_type=None):
        """Return the index entries (dicts: ``digest``, ``mediaType``,
        ``size``, ``artifactType``, ``annotations``) of the manifests whose
        subject is ``subject`` (an alias or a digest), of ``artifact_type``."""
        digest = (subject if ':' in _check_ref(subject)
                  else self.get_manifest_digest(subject))
        # The registry may have filtered them already: filtering again (on
        # the client) does no harm where it did, and is needed where not.
        return [e for e in self._referrer_entries(digest, artifact_type)
                if _check_descriptor(e) and artifact_type in (None, e.get(
                    'artifactType'))]

    def resolve(self, alias):
        """Return the digest of an alias's manifest (get_manifest's)."""
        return self.get_manifest_digest(_check_alias(alias))

    def _copy_referrers(self, digest, target, concurrency, seen):
        """Copy what refers to ``digest`` to target, recursively."""
        for entry in self.referrers(digest):
            if entry['digest'] not in seen:
                seen.add(entry['digest'])
                data, content_type, _ = self._get_manifest(entry['digest'])
                self._copy_manifest(data, content_type, target, concurrency)
                target._put_referrer(data, digest)
                self._copy_referrers(entry['digest'], target, concurrency, seen)

    def _named_by(self, alias, got=None):
        """What del_alias returns: an alias's blobs (an index: its manifests).

        ``got`` is what ``_get_manifest(alias)`` returned, if already asked.
        """
        data, content_type, _ = got or self._get_manifest(alias)
        m, media = _parse_manifest(data, content_type)
        if media in _INDEX_TYPES:
            return sorted(set(_index_platforms(m).values()))
        return [d for d, _ in _manifest_layers(m)]

    def copy_alias(self, alias, target, target_alias=None, concurrency=None):
        """Copy an alias with everything it names to ``target``.

        ``target`` is another DXF (any registry) or an OCILayout.  Blobs
        already there are skipped, blobs in the same registry are mounted,
        the rest stream through (a chunk at a time, by way of an anonymous
        temporary file: see _Source), ``concurrency``
        (default 4) at a time; manifests are copied byte for byte, so their
        digests stay the same.  What refers to the alias's manifest (see
        attach) goes along, and what refers to that.  Returns the manifest's
        digest.
        """
        _check_alias(alias)
        _check_alias(target_alias or alias)
        concurrency = concurrency or _DEFAULT_CONCURRENCY
        data, content_type, digest = self._get_manifest(alias)
        self._copy_manifest(data, content_type, target, concurrency)
        copied = target.set_manifest(target_alias or alias, data)
        self._copy_referrers(digest, target, concurrency, set())
        return copied

    def _copy_manifest(self, data, content_type, target, concurrency=1):
        """Copy what a manifest names (not the manifest itself) to target."""
        m, media = _parse_manifest(data, content_type)
        if media in _INDEX_TYPES:
            for entry in m.get('manifests') or []:
                digest, _ = _check_descriptor(entry)
                child, child_type, _ = self._get_manifest(digest)
                self._copy_manifest(child, child_type, target, concurrency)
                target.set_manifest(digest, child)
            return
        config = [_check_descriptor(m['config'])] if m.get('config') else []
        blobs = []
        for digest, _ in config + _manifest_layers(m):
            if digest not in blobs:
                blobs.append(digest)

        def copy(digest):
            with target._needing('push'):     # the token the push needs
                if target._blob_head(digest) is not None:
                    return
            if target._can_mount_from(self):
                try:
                    target.mount_blob(self.repo, digest)
                    return
                except DXFMountFailed:
                    pass
            with self.pull_blob(digest, chunk_size=_CHUNK_SIZE) as reader:
                target.push_blob(data=reader, digest=digest, check_exists=False)
        # Threads that meet a registry's first 401 together share one token
        # request (_Auth.fetch_token): no blob needs to go first alone.
        self._parallel(copy, blobs, concurrency)

    def _can_mount_from(self, source):
        return False

    def pull_blob_to(self, digest, path, progress=None, concurrency=None):
        """Download a blob into the file ``path``; return its size."""
        with _AtomicFile(path) as f, self.pull_blob(digest, progress=progress) as r:
            r.copy_to(f)
        return r.size

    def pull_blobs(self, refs, directory, progress=None, concurrency=None):
        """Download blobs into ``directory``, several at a time, each file
        there only once verified; return ``[(path, descriptor)]`` in order,
        each descriptor with the blob's size.

        :param refs: digests, aliases (all their blobs) or descriptors
        A blob is named by its title annotation when that is a plain file
        name (never a path: no "../"), else by its digest, as is the second
        of two blobs with one title; a directory layer (as oras pushes it)
        is unpacked into ``directory/<title>/``.  A blob alone may come in
        ranges over ``concurrency`` connections (pull_blob_to).
        """
        plan, used = [], {}
        for ref in refs:
            for desc in ([ref] if isinstance(ref, dict) else [{'digest': ref}]
                         if ':' in ref else self.get_descriptors(ref)):
                digest = desc['digest']
                annotations = desc.get('annotations') or {}
                title = _safe_name(annotations.get(_TITLE_ANNOTATION))
                name = title or digest.split(':')[1]
                if used.setdefault(name, digest) != digest:
                    name = digest.split(':')[1]   # two blobs, one title: keep both
                unpack = (bool(title) and name == title
                          and annotations.get(_UNPACK_ANNOTATION) == 'true')
                if (name, unpack) not in [(n, u) for n, u, _ in plan]:
                    plan.append((name, unpack, desc))
        concurrency = concurrency or _DEFAULT_CONCURRENCY

        def pull(item):
            name, unpack, desc = item
            path = os.path.join(directory, name)
            # ranges over several connections for a blob alone
            fetch = self._pull_tree if unpack else self.pull_blob_to
            size = fetch(desc if unpack else desc['digest'], path, progress=progress,
                         concurrency=concurrency if len(plan) == 1 else 1)
            return path, dict(desc, size=size)
        return _in_parallel(pull, plan, concurrency, getattr(self, '_transport', None))

    def _pull_tree(self, desc, path, progress=None, concurrency=None):
        """Download a directory layer, unpack it beside ``path`` and, once all
        is checked, put it at ``path`` (replacing what was there); return the
        layer's size."""
        import shutil
        import tempfile
        directory, name = os.path.split(path)
        # Its partial is named by the layer, not the work directory: resumable.
        layer = os.path.join(directory, '.%s.dxf-layer' % name)
        try:
            size = self.pull_blob_to(desc['digest'], layer, progress=progress,
                                     concurrency=concurrency)      # verified
            work = tempfile.mkdtemp(dir=directory, prefix='.%s.' % name,
                                    suffix='.dxf-partial')
        except (DXFInputError, OSError) as exc:    # named as a file's would be: PATH
            cause = exc if isinstance(exc, OSError) else exc.__cause__
            if not isinstance(cause, OSError):
                raise
            raise DXFInputError('cannot write %s: %s' % (path, _exc_text(cause))) from exc
        try:
            archive = os.path.join(work, 'layer')
            os.rename(layer, archive)
            tree = os.path.join(work, 'tree')
            os.mkdir(tree, 0o755)
            _unpack_layer(archive, tree, name, (desc.get('annotations') or {}).get(
                _TAR_DIGEST_ANNOTATION), '%s (%s)' % (desc['digest'][:19], name))
            if os.path.isdir(path) and not os.path.islink(path):
                os.rename(path, os.path.join(work, 'old'))
            elif os.path.lexists(path):
                os.unlink(path)
            os.rename(tree, path)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return size


# =============================================================================
# 11. Registry repository
#    DXF: one repository of a registry (blobs, uploads, aliases, manifests).
# =============================================================================


class DXF(DXFBase, _AliasMethods):
    """One repository in a Docker / OCI registry.

    Takes DXFBase's arguments plus ``repo``, the repository name
    (``library/`` is prefixed to one-component names on Docker Hub).
    """

    def __init__(self, host, repo, auth=None, insecure=False, auth_host=None,
                 tlsverify=True, timeout=None, allow_insecure_auth=False,
                 retries=None, proxies=None, cert=None):
        super().__init__(host, auth, insecure, auth_host, tlsverify, timeout,
                         allow_insecure_auth, retries, proxies, cert=cert)
        self._set_repo(repo)

    def _set_repo(self, repo):
        _check_repo(repo)
        if _is_docker_hub(self._host) and '/' not in repo:
            repo = 'library/' + repo
        self._repo = repo
        self._repo_path = repo + '/'
        self._sizes = {}     # digest -> size, learnt from pushes and HEADs

    @classmethod
    def from_base(cls, base, repo):
        """A DXF for ``repo`` sharing ``base``'s connections, settings and tokens."""
        obj = cls.__new__(cls)
        obj._share(base)
        obj._set_repo(repo)
        return obj

    @property
    def repo(self):
        """The repository name."""
        return self._repo

    def _url(self, *parts):
        return self._repo_path + '/'.join(parts)

    # -- blobs ---------------------------------------------------------------

    def _blob_head(self, digest):
        """The blob's size, or None when the repository does not have it."""
        split_digest(digest)
        resp = self._request('HEAD', self._url('blobs', digest),
                             self._scope(['pull']), ok=(200, 404))
        if resp.status == 404:
            return None
        size = resp.length
        if size is None:
            raise DXFProtocolError('HEAD %s: the answer has no Content-Length'
                                   % _path(resp.url), method='HEAD', url=resp.url)
        self._sizes[digest] = size
        return size

    def blob_size(self, digest):
        """Return the size in bytes of a blob."""
        size = self._blob_head(digest)
        if size is None:
            raise DXFHTTPNotFoundError('HEAD', urllib.parse.urljoin(
                self._base, self._url('blobs', digest)), 404,
                message='blob %s not found in %s' % (digest, self._repo))
        return size

    def _open_session(self, record):
        """``(location, offset, chunk floor)``: the session ``record`` names,
        where the registry says it stands, else a new one (POST)."""
        scope = self._scope(['pull', 'push'])
        if record.location:
            try:
                resp = self._request('GET', record.location, scope, ok=(204,))
                return (_join(record.location, resp.header('Location') or
                              record.location),
                        _range_end(resp.header('Range')) + 1, _MIN_PUSH_CHUNK)
            except (DXFHTTPError, DXFProtocolError):
                pass        # forgotten or invalidated (404): start over
        resp = self._request('POST', self._url('blobs', 'uploads/'), scope,
                             ok=(202,))
        location = resp.header('Location')
        if not location:
            raise DXFProtocolError('POST %s: upload session without a Location'
                                   % _path(resp.url), method='POST', url=resp.url)
        try:
            minimum = int(resp.header('OCI-Chunk-Min-Length') or 0)
        except ValueError:
            minimum = 0
        return _join(resp.url, location), 0, max(minimum, _MIN_PUSH_CHUNK)

    def _cancel_upload(self, location):
        try:
            self._request('DELETE', location, self._scope(['pull', 'push']),
                          ok=(204, 404))
        except DXFError:
            pass   # best effort: the registry expires sessions anyway

    def _finish_upload(self, location, digest, body=None):
        resp = self._request('PUT', _add_query(location, digest=digest),
                             self._scope(['pull', 'push']), body=body, ok=(201,),
                             headers={'Content-Type': 'application/octet-stream'})
        _check_echo(resp, digest)

    def push_blob(self, filename=None, progress=None, data=None, digest=None,
                  check_exists=True, chunk_size=None):
        """Upload a blob from a file or from ``data``; return its digest.

        A file is hashed first, and not sent if the registry has it.

        :param filename: file to upload
        :param progress: called as pieces are sent, as python-dxf does: for
            a file ``progress(digest, b'', total)`` first, then
            ``progress(digest, chunk, total)`` after each piece (``digest``
            and ``total`` are None for a pipe); for ``data``
            ``progress(digest, chunk)`` with each non-empty chunk
        :param data: bytes, or an iterable of bytes, instead of a file
        :param digest: the digest if known (checked against the content)
        :param check_exists: skip the upload if the registry has the blob
        :param chunk_size: send more than this many bytes in requests of
            this size (default 64 MiB), each resumable, also by a later run
            after a kill (see _UploadRecord); halved after a 413
        """
        if (filename is None) == (data is None):
            raise TypeError('push_blob needs filename or data (not both)')
        if digest is not None:
            split_digest(digest)
        if data is not None:
            progress = _data_progress(progress)

        def push(_):
            if filename is None:
                with _Source(data=data, digest=digest) as source:
                    return self._upload(source, progress, check_exists, chunk_size)
            with _open_input(filename) as f, _Source(f, digest=digest) as source:
                return self._upload(source, progress, check_exists, chunk_size)
        # In a worker thread: Ctrl-C, raised in the main thread, then never
        # cuts a request body (see _in_parallel).
        with self._needing('push'):     # one token for HEAD and upload
            return _in_parallel(push, [None], 1, self._transport)[0]

    def _upload(self, source, progress, check_exists, chunk_size):
        """The one upload engine: a _Source goes up in a session (POST), in
        one PUT when it fits in a chunk, else in PATCHes of a chunk each and
        a PUT with the rest (_send); a new session is started within the
        retry budget while the source can be read from its start again.

        Files are hashed before anything is sent: a blob the registry has
        costs one HEAD, and no session is ever opened for nothing.
        """
        source.measure()
        if check_exists and source.digest and self._blob_head(source.digest) is not None:
            return source.digest
        chunk_size = chunk_size or _PUSH_CHUNK
        record = _UploadRecord(self._base, self._repo, source.digest if (
            source.stream is None and source.size > chunk_size) else None)
        budget, attempt = self._transport.current().budget, 0
        while True:
            try:
                location, offset, floor = self._open_session(record)
                self._send(source, location, offset, max(chunk_size, floor),
                           floor, progress, record)
                self._sizes[source.digest] = source.size
                return source.digest
            except (DXFConnectionError, DXFHTTPError) as exc:
                if getattr(exc, 'status', None) == 400 and source.stream is None:
                    # The content does not match the digest: if the file
                    # changed since it was hashed (or the digest given is
                    # wrong), say so rather than "bad request".
                    source.hash_again()
                    raise
                # A registry forgets a session whose connection broke (the
                # next request on it gets 404): start again from the POST.
                if not (source.can_restart() and budget.retry(exc, (404,), attempt=attempt)):
                    raise
            attempt += 1

    def _send(self, source, location, offset, chunk, floor, progress, record):
        """Send ``source`` from ``offset`` in session ``location``: PATCHes
        of ``chunk`` bytes, the last piece in the PUT that ends the upload.

        After a failed chunk the session is asked where it stands (GET:
        204 with Range) and the upload goes on from there; after a 413 (a
        proxy's body limit) the chunk is halved, down to ``floor``.  The
        Location after each chunk goes to ``record``.  On any failure, an
        interrupt included, the session is cancelled: by then the body in
        flight has ended (see _STOP), so the registry takes the DELETE.
        """
        scope = self._scope(['pull', 'push'])
        budget = self._transport.current().budget
        sent = [offset]     # how far the bytes went: a GET may not claim more
        if source.stream is not None:       # progress as it is read
            source.on_read, progress = progress, None

        def on_data(view):
            sent[0] += len(view)
            if progress:
                progress(source.digest, bytes(view), source.size)
        if progress:
            progress(source.digest, b'', source.size)
        try:
            while True:
                body = source.piece(offset, chunk, on_data)
                if body is None:
                    break
                sent[0] = offset
                try:
                    if offset + body.length == source.size:   # the last
                        self._finish_upload(location, source.digest, body)
                        return source.digest
                    resp = self._request(
                        'PATCH', location, scope, body=body,
                        headers={'Content-Type': 'application/octet-stream',
                                 'Content-Range': '%d-%d' % (
                                     offset, offset + body.length - 1)},
                        ok=(202,))
                    offset += body.length
                except (DXFConnectionError, DXFHTTPError) as exc:
                    status = getattr(exc, 'status', None)
                    if status == 413:
                        if chunk <= floor:
                            raise _refusal(exc, 'refused a request body of '
                                           '%d bytes, the smallest chunk dxf '
                                           'sends (DXF_PUSH_CHUNK_SIZE sets it)'
                                           % body.length) from None
                        chunk = max(floor, min(chunk, body.length) // 2)
                        continue
                    if not budget.retry(exc, also=(None, 416), delay=0):
                        raise
                    resp = self._request('GET', location, scope, ok=(204,))
                    offset = _range_end(resp.header('Range')) + 1
                    if offset > sent[0]:
                        raise DXFProtocolError(
                            'GET %s: upload session claims bytes never sent'
                            % _path(location), method='GET', url=location)
                location = _join(location, resp.header('Location') or location)
                record.save(location)
            self._finish_upload(location, source.digest)
        except BaseException:
            self._cancel_upload(location)
            raise
        finally:
            record.drop()
        return source.digest

    def pull_blob(self, digest, size=False, chunk_size=None, progress=None):
        """Download a blob: return a BlobReader over its verified bytes.

        :param digest: the blob's digest, or a one-element list of it (what
            get_alias returns for a one-blob alias, as the README example
            passes it)
        :param size: python-dxf compatibility: return ``(reader, size)``
        :param chunk_size: bytes per iteration (default 8192)
        :param progress: ``progress(digest, chunk, total)`` as bytes arrive
        """
        digest = _one_digest(digest)
        reader = self._reader(digest, self._blob_get(digest), chunk_size=chunk_size,
                              progress=progress)
        return (reader, reader.size) if size else reader

    def _blob_get(self, digest, start=None, end=None, ok=(200,), url=None):
        """GET a blob (bytes ``start`` to before ``end``: a range request)."""
        return self._request(
            'GET', url or self._url('blobs', digest), self._scope(['pull']),
            ok=ok, stream=True, headers=None if start is None else {
                'Range': 'bytes=%d-%s' % (start, '' if end is None else end - 1)})

    def _reader(self, digest, resp, **options):
        """A BlobReader on ``resp`` that resumes with range requests."""
        return BlobReader(resp, digest, expected_size=self._sizes.get(digest),
                          reopen=lambda offset: self._blob_get(
                              digest, offset, ok=(200, 206)),
                          budget=self._transport.current().budget, **options)

    def pull_blob_to(self, digest, path, progress=None, concurrency=None):
        """Download a blob into the file ``path``, where it appears verified;
        return its size.  Resumes what a failed or killed pull kept (see
        _Partial); 32 MiB or more come in ranges over up to ``concurrency``
        connections (default 4) on long paths, if the registry has them."""
        digest = _one_digest(digest)
        with self._needing(), _Partial(path, digest) as part:
            for again in (part.resumed, False):
                try:
                    part.hash_prefix()
                    self._fill(part, progress, concurrency or _DEFAULT_CONCURRENCY)
                    return part.finish()
                except DXFIntegrityError:
                    if not again:
                        raise
                    part.restart()      # a corrupted partial: once more, afresh

    def _fill(self, part, progress, concurrency):
        """Fetch what ``part`` lacks: in ranges where _stream_or_ranges
        finds them worth it, else as one stream (all of it after a 200)."""
        start, size = part.hashed, part.size or self._sizes.get(part.digest)
        if size is not None and start >= size:
            part.size = size
            return
        resp, start = self._stream_or_ranges(part, start=start, size=size,
                                             progress=progress, concurrency=concurrency)
        if resp is None:
            return
        if resp.status == 206:
            part.size = _content_range(resp, part.digest, start, None, part.size or size)
        else:
            part.restart()
            start = 0
        part.ranges = [(0, start)] if start else []
        part.file.truncate(start)
        part.save(tail=start)
        with self._reader(part.digest, resp, offset=start, hashed=part.hash,
                          progress=progress and (lambda d, c, t: c and progress(d, c, t))
                          ) as reader:       # a line begun by the sample goes on
            reader.copy_to(part.file)        # verified
        part.hashed = part.size = reader._done

    def _stream_or_ranges(self, part, start, size, progress, concurrency):
        """After a 206 to a range of _RANGED_MIN bytes whose first eighth
        came slower than _RANGED_RATE, fetch the rest in ranges: ``(None,
        None)``.  Else ``(answer, offset)``: the rest comes in that answer."""
        ranged = concurrency > 1 and (size or _RANGED_MIN) >= _RANGED_MIN
        end = start + _RANGED_MIN if ranged else None
        resp = self._blob_get(part.digest, start if start or end else None, end,
                              ok=(200, 206, 416))
        if resp.status == 206 and end:
            size = part.size = _content_range(resp, part.digest, start, end, size)
            if end >= size:
                return resp, start
            began, sample = time.monotonic(), start + _RANGED_MIN // 8
            resp = self._fetch(part, start, sample, resp, end, progress)
            if sample - start < _RANGED_RATE * (time.monotonic() - began):
                self._fill_ranges(part, (sample, end, resp), progress, concurrency)
                return None, None
            start = part.hashed
        elif resp.status != 416:
            return resp, start
        resp.close()        # 0 bytes to range over, or a fast path
        return self._blob_get(part.digest, start or None, ok=(200, 206)), start

    def _fill_ranges(self, part, first, progress, concurrency):
        """The rest of ``part`` in pieces over several connections, the
        first one ``(start, stop, its response)``, each piece asked again from
        where it broke; a free thread hashes the complete prefix."""
        size, url, at = part.size, first[2].url, first[1]
        step = max(_RANGED_MIN // 4, (size - at) // (concurrency * 4))
        pieces = [first]
        for a, b in part.ranges + [(size, size)]:
            pieces += [(x, min(x + step, a), None) for x in range(at, a, step)]
            at = max(at, b)
        _in_parallel(lambda piece: self._fetch(part, *piece, url=url, progress=progress
                                               ).release(), pieces, concurrency,
                     self._transport)
        part.hash_prefix()

    def _fetch(self, part, start, stop, resp, until=None, progress=None, url=None):
        """Write bytes ``start`` to ``stop`` of ``part`` from ``resp`` (None:
        ask ``url`` for them, up to ``until``), asking again from where it
        broke within the operation's budget; return the response, not read to
        its end if ``until`` is beyond ``stop``."""
        buf, budget = memoryview(bytearray(_PIPELINE_PIECE)), self._transport.current().budget
        with open(part.name, 'r+b', buffering=0) as f:
            f.seek(start)
            while start < stop:
                if resp is None:
                    resp = self._blob_get(part.digest, start, until or stop, (200, 206), url)
                    _content_range(resp, part.digest, start, until or stop, part.size)
                try:
                    n = resp.chunk(0, buf[:stop - start])
                    if not n:
                        raise DXFConnectionError('blob %s: a range ended at byte %d'
                                                 % (part.digest, start))
                    _write_all(f, buf[:n])
                except BaseException as exc:
                    resp.close()      # broken or cut short: ask again
                    resp = None
                    if not isinstance(exc, DXFConnectionError) or not budget.retry(exc, (None,)):
                        raise
                    continue
                part.add(start, start + n, save=True)
                start += n
                part.hash_prefix(block=False)
                if progress:
                    progress(part.digest, bytes(buf[:n]), part.size)
        return resp

    def del_blob(self, digest):
        """Delete a blob from the repository."""
        split_digest(digest)
        self._request('DELETE', self._url('blobs', digest),
                      self._scope(['delete']), ok=(202,))
        self._sizes.pop(digest, None)

    def _can_mount_from(self, source):
        return (isinstance(source, DXF) and source._base == self._base
                and source.repo != self.repo)

    def mount_blob(self, repo, digest):
        """Mount a blob from another repository of the same registry.

        :raises DXFMountFailed: the registry did not mount it (e.g. ``repo``
            lacks the blob); the session it opened instead is cancelled
        """
        _check_repo(repo)
        split_digest(digest)
        scope = '%s repository:%s:pull' % (self._scope(['pull', 'push']), repo)
        query = '?' + urllib.parse.urlencode([('mount', digest), ('from', repo)])
        resp = self._request('POST', self._url('blobs', 'uploads/') + query,
                             scope, ok=(201, 202))
        if resp.status == 202:
            location = resp.header('Location')
            if location:
                self._cancel_upload(_join(resp.url, location))
            raise DXFMountFailed('registry did not mount %s from %s'
                                 % (digest, repo), repo, digest)
        _check_echo(resp, digest)
        return digest

    # -- manifests -----------------------------------------------------------

    def _manifest_request(self, ref, method='GET'):
        return self._request(method, self._url('manifests', _check_ref(ref)),
                             self._scope(['pull']), headers={'Accept': _ACCEPT},
                             limit=_MAX_MANIFEST)

    def _get_manifest(self, ref, method='GET'):
        """``(bytes, media type, digest)`` of a manifest, verified."""
        try:
            resp = self._manifest_request(ref, method)
        except DXFNotFoundError as exc:      # as OCILayout words it
            exc.args = ('%s %s not found in %s' % (
                'manifest' if ':' in ref else 'alias', ref, self._repo),)
            raise
        data = resp.body
        content_type = resp.header('Content-Type', '')
        if method != 'GET':         # no body to hash: None if not echoed
            return data, content_type, resp.header('Docker-Content-Digest')
        by_ref = ref if ':' in ref else None
        if by_ref:
            _Hasher.like(by_ref, data).verify(by_ref)
        echoed = _check_echo(resp, data=data)
        return data, content_type, by_ref or echoed or hash_bytes(data)

    def get_manifest_digest(self, alias):
        """Return the digest of an alias's manifest (a HEAD request; a GET,
        hashed, where the response has no Docker-Content-Digest, as on ECR)."""
        return (self._get_manifest(alias, method='HEAD')[2]
                or self._get_manifest(alias)[2])

    def set_manifest(self, alias, manifest):
        """Store a manifest (str or bytes) under an alias; return its digest."""
        _check_ref(alias)
        data, _, media = _manifest_to_store(manifest)
        self._put_manifest(alias, data, media)
        return hash_bytes(data)

    def _put_manifest(self, ref, data, media, headers=None):
        digest = hash_bytes(data)
        resp = self._request('PUT', self._url('manifests', ref),
                             self._scope(['pull', 'push']),
                             headers=dict(headers or {}, **{'Content-Type': media}),
                             body=data, ok=(201,))
        _check_echo(resp, digest)
        return resp

    # -- referrers (distribution-spec 1.1) -----------------------------------

    _referrers_api = None        # whether the registry has it, once known

    def _put_referrer(self, manifest, subject):
        """Store a manifest with a ``subject`` by its digest.  A registry that
        lists it answers ``OCI-Subject``; without that header the fallback
        index is brought up to date ("Pushing Manifests with Subject")."""
        data, m, media = _manifest_to_store(manifest)
        if self._put_manifest(hash_bytes(data), data, media).header('OCI-Subject'):
            return
        entry, tag = _referrer_entry(data, m, media), _referrers_tag(subject)
        for attempt in range(_REFERRERS_TRIES + 1):
            entries, etag = self._referrers_at(tag)
            if any(e.get('digest') == entry['digest'] for e in entries):
                return
            if attempt == _REFERRERS_TRIES:
                break
            # If-Match: a registry that keeps ETags refuses (412) an index
            # changed since it was read (the spec's advice against lost
            # updates).  Distribution 2.8 ignores it: the next read finds an
            # entry another writer dropped, and it is added again.
            try:
                self._put_manifest(tag, json.dumps({
                    'schemaVersion': 2, 'mediaType': _OCI_INDEX, 'manifests':
                    entries + [entry]}, sort_keys=True).encode('utf-8'),
                    _OCI_INDEX, etag and {'If-Match': etag})
            except DXFHTTPError as exc:
                if exc.status != 412:
                    raise
        raise DXFError('the referrers index %s keeps changing: %s is not in '
                       'it; attach again' % (tag, entry['digest']))

    def _referrers_at(self, tag):
        """(entries, ETag) of the fallback index at ``tag`` ([] if none).
        Anything but an OCI index there (say, a registry resolving the tag
        sha256-<hex> to the manifest sha256:<hex>, oras-go#1396) is an error."""
        try:
            resp = self._manifest_request(tag)
            m, media = _parse_manifest(resp.body, resp.header('Content-Type'))
        except DXFNotFoundError:
            return [], None
        except DXFManifestError:
            media = None
        if media != _OCI_INDEX:
            raise DXFManifestError('tag %s is not a referrers index (an OCI '
                                   'image index), left as it is' % tag)
        return m['manifests'], resp.header('ETag')

    def _referrer_entries(self, digest, artifact_type=None):
        """What refers to ``digest``: the referrers API's response, or where
        the registry answers 404 but for an unknown repository, the fallback
        index ("Listing Referrers", "Unavailable Referrers API")."""
        query = artifact_type and '?' + urllib.parse.urlencode(
            {'artifactType': artifact_type})
        if self._referrers_api is not False:
            try:
                entries = list(self._paginate(
                    self._url('referrers', digest) + (query or ''), 'manifests',
                    self._scope(['pull']), None, dict))
                self._referrers_api = True
                return entries
            except DXFHTTPError as exc:
                if exc.status != 404 or exc._has_code('NAME_UNKNOWN'):
                    raise
                self._referrers_api = False
        return self._referrers_at(_referrers_tag(digest))[0]

    def _set_alias_manifest(self, alias, manifest):
        """set_manifest for dxf's own manifests, pushing the empty config
        blob when the registry says it lacks it (usually it has it, so
        asking first would cost a request every time)."""
        for attempt in range(_BLOB_UNKNOWN_TRIES):
            try:
                return self.set_manifest(alias, manifest)
            except DXFHTTPError as exc:
                if attempt + 1 == _BLOB_UNKNOWN_TRIES or not exc._has_code(
                        'MANIFEST_BLOB_UNKNOWN'):
                    raise
            # Another writer may be pushing the same blobs: distribution
            # rewrites a repository's blob links in place, and they read as
            # missing for a moment.  Push the config if it really is missing.
            with self._transport.lock:
                if self._blob_head(_EMPTY_DIGEST) is None:
                    self._upload(_Source(data=_EMPTY_BLOB, digest=_EMPTY_DIGEST),
                                 progress=None, check_exists=False,
                                 chunk_size=None)
                    continue      # the usual case: the first alias of a repo
            time.sleep(_RETRY_BASE * (attempt + 1))

    def del_alias(self, alias):
        """Delete an alias; return the digests of the blobs it named.

        The blobs stay.  Other aliases are never touched, even those sharing
        the same manifest: the alias is first moved to a manifest of its own,
        which is then deleted (registries delete manifests by digest, taking
        every tag on them along), or, where the registry refuses that while a
        tag points at it (Google Artifact Registry), the tag is deleted.

        A registry that refuses deletes (Docker Hub, GHCR: 405) is found out
        before the alias is touched; if the delete fails after the move, the
        alias is put back as it was.  Either way the error says so.
        """
        _check_alias(alias)
        with self._needing('push', 'delete'):
            return self._del_alias(alias)

    def _del_alias(self, alias):
        got = self._get_manifest(alias)
        named = self._named_by(alias, got)
        placeholder = _alias_manifest([], {'$manifest': {
            'vnd.dxf.deleting': alias,
            'vnd.dxf.nonce': base64.b32encode(os.urandom(10)).decode('ascii')}})
        digest = hash_bytes(placeholder)

        def delete(ref, ok=(202,)):
            self._request('DELETE', self._url('manifests', ref),
                          self._scope(['delete']), ok=ok)
        # Ask first: deleting the placeholder before it exists is 404 where
        # manifests can be deleted, 405 where they cannot (Docker Hub, GHCR)
        # and 401/403 without the right; then the alias is left alone.
        try:
            delete(digest, ok=(202, 404))
        except DXFHTTPError as exc:
            if exc.status in (401, 403, 405) or exc.status >= 500 or exc._has_code(
                    'UNSUPPORTED'):
                raise _refusal(exc, 'did not delete alias %s, which is left '
                               'as it was' % alias) from None
        self._set_alias_manifest(alias, placeholder)
        try:
            try:
                delete(digest)
            except DXFHTTPError as exc:
                if exc.status not in (400, 405, 409):
                    raise
                # Google Artifact Registry: 400 GOOGLE_MANIFEST_DANGLING_TAG
                # while a tag points at the manifest; it deletes tags by name
                # (the OCI spec's tag delete), and so do Quay and GitLab.
                try:
                    delete(alias)
                except DXFHTTPError:
                    raise exc from None
                try:        # the placeholder, untagged now
                    delete(digest, ok=(202, 404))
                except DXFError:
                    pass
        except DXFError as exc:
            self._put_back(alias, got, exc)
        return named

    def _put_back(self, alias, got, exc):
        """Store an alias's manifest again after a failed delete; raise."""
        data, content_type, digest = got
        try:
            self._put_manifest(alias, data, content_type or _parse_manifest(data)[1])
        except DXFError as again:
            raise _refusal(exc, 'did not delete alias %s, and putting it back '
                           'failed (%s): it was manifest %s' % (
                               alias, again, digest)) from None
        raise _refusal(exc, 'did not delete alias %s; it was put back as it '
                       'was' % alias) from None

    def list_aliases(self, batch_size=None, iterate=False):
        """The aliases (tags) in the repository.

        :param batch_size: page size to ask for
        :param iterate: return an iterator instead of a list
        """
        items = self._paginate(self._url('tags', 'list'), 'tags',
                               self._scope(['pull']), batch_size)
        return items if iterate else list(items)


# =============================================================================
# 12. Local files and the OCI layout store
#    Files that appear only once complete; OCILayout: a directory in the OCI
#    image layout, addressed as oci:DIR.
# =============================================================================


class _AtomicFile:
    """A file that appears under its name only once complete and on disk.

    Bytes go to a temporary file beside the target; it is fsynced and
    renamed over the target on success, removed on any failure (a failed
    fsync included: a full disk leaves nothing behind).
    """

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        # Not tempfile.mkstemp: its mode 0600 would have to be widened by
        # the umask, and reading the umask means setting it, which races
        # with the other threads of a parallel pull creating files.  Opened
        # with 0666, the file gets the umask from the kernel.
        self.tmp = os.path.join(
            os.path.dirname(os.path.abspath(self.path)), '.%s.%s.dxf-partial'
            % (os.path.basename(self.path), os.urandom(6).hex()))
        flags = (os.O_WRONLY | os.O_CREAT | os.O_EXCL
                 | getattr(os, 'O_BINARY', 0) | getattr(os, 'O_CLOEXEC', 0))
        try:
            self.file = os.fdopen(os.open(self.tmp, flags, 0o666), 'wb')
        except OSError as exc:
            raise DXFInputError('cannot write %s: %s'
                                % (self.path, exc.strerror or exc)) from exc
        return self.file

    def __exit__(self, exc_type, exc, tb):
        done = False
        try:
            if exc_type is None:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                os.replace(self.tmp, self.path)
                done = True
        finally:
            self.file.close()
            if not done:
                try:
                    os.unlink(self.tmp)
                except OSError:
                    pass      # the error on its way out says more
        return False


class _UploadRecord:
    """Where a file's upload session stands, so that a run killed half-way
    (SIGKILL, a crash) can go on with it: one small file per registry,
    repository and digest under ``$XDG_CACHE_HOME/dxf/uploads`` (else
    ``~/.cache/dxf/uploads``), mode 0600, holding the session's Location
    (no credentials), written after each chunk the registry took and
    removed once the session ends.  Best effort: a cache that cannot be
    written costs only the resume.  Without a digest it does nothing."""

    def __init__(self, base, repo, digest):
        self.location = self.path = None
        if digest is None:
            return
        self.what = [base, repo, digest]
        cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(
            os.path.expanduser('~'), '.cache')
        self.path = os.path.join(cache, 'dxf', 'uploads', hash_bytes(
            json.dumps(self.what).encode('utf-8'))[7:39] + '.json')
        try:
            with open(self.path, 'rb') as f:
                doc = json.loads(f.read(_MAX_SMALL_BODY).decode('utf-8'))
            if doc['session'][:3] == self.what:
                self.location = doc['session'][3]
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass         # none, or torn by a kill: start a new session

    def save(self, location):
        if self.path is None:
            return
        try:
            os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
                         0o600)
            with os.fdopen(fd, 'wb') as f:
                f.write(json.dumps({'session': self.what + [location]}).encode(
                    'utf-8'))
        except OSError:
            pass

    def drop(self):
        if self.path is not None:
            try:
                os.unlink(self.path)
            except OSError:
                pass
class _Partial:
    """A blob on its way to ``path``, kept if the pull fails (issue 16):
    ``.NAME.<hex>.dxf-partial`` and its record ``....ranges`` (JSON: digest,
    size, the byte ranges complete; ``tail``: and from there to the file's
    end).  Both go once the file is in place, or if nothing came or the
    digest fails; a rerun hashes the complete prefix and fetches the rest."""

    def __init__(self, path, digest):
        head, name = os.path.split(os.path.abspath(path))
        self.path, self.digest, self.lock = path, digest, threading.Lock()
        self.name = os.path.join(head, '.%s.%s.dxf-partial' % (
            name, digest.split(':')[1][:32]))
        self.record, self.hash_lock = self.name + '.ranges', threading.Lock()

    def __enter__(self):
        try:        # appending: a stream writes from where it is truncated
            self.file = open(self.name, 'a+b')
            self.reader = open(self.name, 'rb', buffering=0)   # no stale read-ahead
        except OSError as exc:
            raise DXFInputError('cannot write %s: %s' % (self.path, _exc_text(exc))) from exc
        try:
            with open(self.record) as f:
                state = json.load(f)
            if state['digest'] != self.digest:
                raise ValueError(self.record)
            tail = [] if state['tail'] is None else [(state['tail'], os.path.getsize(self.name))]
            self.size = state['size']
            ranges = [(int(a), int(b)) for a, b in state['ranges'] + tail]
        except (OSError, ValueError, KeyError, TypeError):
            self.size, ranges = None, []
        self.restart(ranges)
        self.resumed = bool(ranges)
        return self

    def restart(self, keep=()):
        """Forget all but the ranges ``keep``; hash from the start."""
        self.ranges, self.hashed, self.hash = [], 0, _Hasher.like(self.digest)
        for start, end in keep:
            self.add(start, end)
        if not keep:
            self.file.truncate(0)
        self.reader.seek(0)

    def add(self, start, end, save=False):
        """Count bytes [start, end) complete (``save``: in the record too)."""
        with self.lock:
            merged = []
            for a, b in sorted(self.ranges + [(start, end)]):
                if merged and a <= merged[-1][1]:
                    a, b = merged[-1][0], max(b, merged.pop()[1])
                merged.append((a, b))
            self.ranges = merged
        if save:
            self.save()

    def save(self, tail=None):
        with self.lock:
            with open(self.record + '.new', 'w') as f:
                json.dump({'digest': self.digest, 'size': self.size,
                           'ranges': self.ranges, 'tail': tail}, f)
            os.replace(self.record + '.new', self.record)

    def hash_prefix(self, block=True):
        """Hash the complete prefix not hashed yet, read back from the file;
        without ``block``, only if no other thread is at it."""
        if self.hash_lock.acquire(block):
            ranges = self.ranges
            end = ranges[0][1] if ranges and not ranges[0][0] else 0
            while self.hashed < end:
                data = self.reader.read(min(_PIPELINE_PIECE, end - self.hashed))
                self.hash.update(data)
                self.hashed += len(data) or end    # none: the digest will say
            self.hash_lock.release()

    def finish(self):
        """Check the digest, put the file in place; return its size."""
        self.hash.verify(self.digest, whole=self.hashed == self.size)
        self.file.truncate(self.size)
        self.file.flush()
        os.fsync(self.file.fileno())
        os.replace(self.name, self.path)
        os.unlink(self.record)
        return self.size

    def __exit__(self, exc_type, exc, tb):
        self.file.close()
        self.reader.close()
        if exc_type and (issubclass(exc_type, (DXFIntegrityError, OSError))
                         or not os.path.getsize(self.name)):    # OSError: disk full
            for name in (self.name, self.record):
                try:
                    os.unlink(name)
                except OSError:
                    pass


class _FileLock:
    """An exclusive lock on a file (flock; a no-op where there is none)."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        self.file = open(self.path, 'a+b')
        try:
            import fcntl
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc):
        self.file.close()    # closing releases the lock


def _refusal(exc, what):
    """``exc`` (a DXFError) with ``what`` happened because of it in front."""
    message = 'registry %s (%s)' % (what, exc)
    if isinstance(exc, DXFHTTPError):
        return type(exc)(exc.method, exc.url, exc.status, exc.errors,
                         exc.reason, exc.expected, message=message)
    new = DXFError(message)
    new.exit_code = exc.exit_code
    return new


class _FileSource:
    """What BlobReader needs of a response, for a blob in a file."""

    def __init__(self, f, size):
        self.raw = f
        self.length = size

    def chunk(self, n, into=None):
        return self.raw.read(n) if into is None else self.raw.readinto(into)

    def release(self):
        self.raw.close()

    close = release


class OCILayout(_AliasMethods):
    """An OCI image layout directory used as a store, like a repository.

    The format of the image spec (``oci-layout``, ``index.json``,
    ``blobs/<algorithm>/<hex>``): aliases are the entries of ``index.json``
    named by ``org.opencontainers.image.ref.name``, so skopeo, oras and
    crane read what dxf writes there and the other way round.  The directory
    is created on the first write.  Blobs are written to a temporary file
    and renamed once their digest checks out.
    """

    def __init__(self, path):
        self.path = path
        self.repo = os.path.basename(os.path.normpath(path))
        self._sizes = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Nothing to close; for symmetry with DXF."""

    def _blob_path(self, digest):
        method, encoded = split_digest(digest)
        return os.path.join(self.path, 'blobs', method, encoded)

    def _not_found(self, what):
        return DXFNotFoundError('%s not found in %s' % (what, self.path), what)

    def _init(self):
        """Create the layout if it does not exist yet."""
        marker = os.path.join(self.path, 'oci-layout')
        if not os.path.exists(marker):
            os.makedirs(os.path.join(self.path, 'blobs'), exist_ok=True)
            self._write_file(marker, b'{"imageLayoutVersion": "1.0.0"}')

    @staticmethod
    def _write_file(path, data):
        with _AtomicFile(path) as f:
            f.write(data)

    # -- blobs ---------------------------------------------------------------

    def _blob_head(self, digest):
        try:
            return os.stat(self._blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def blob_size(self, digest):
        """Return the size in bytes of a blob."""
        size = self._blob_head(digest)
        if size is None:
            raise self._not_found('blob %s' % digest)
        return size

    def push_blob(self, filename=None, progress=None, data=None, digest=None,
                  check_exists=True, chunk_size=None):
        """Store a blob from a file or from ``data``; return its digest
        (``chunk_size``: as DXF's, which this store has no use for)."""
        if (filename is None) == (data is None):
            raise TypeError('push_blob needs filename or data (not both)')
        if digest is not None and check_exists and self._blob_head(digest) is not None:
            return digest
        h = _Hasher.like(digest)
        source = _open_input(filename) if filename is not None else None
        try:
            total = None
            if source is None:
                progress = _data_progress(progress)
                chunks = ([bytes(data)] if isinstance(
                    data, (bytes, bytearray, memoryview)) else data)
            else:
                import stat
                st = os.fstat(source.fileno())
                total = st.st_size if stat.S_ISREG(st.st_mode) else None
                chunks = iter(lambda: source.read(_CHUNK_SIZE), b'')
            self._init()
            directory = os.path.join(self.path, 'blobs', h.algorithm)
            os.makedirs(directory, exist_ok=True)
            tmp = _AtomicFile(os.path.join(directory, 'upload'))
            with tmp as f:
                if progress:
                    progress(digest, b'', total)
                for chunk in chunks:
                    _check_stop()       # in a worker thread: see _STOP
                    h.update(chunk)
                    f.write(chunk)
                    if progress:
                        progress(digest, bytes(chunk), total)
                got = h.verify(digest)
                tmp.path = self._blob_path(got)    # rename it to its digest
        finally:
            if source:
                source.close()
        self._sizes[got] = os.stat(tmp.path).st_size
        return got

    def pull_blob(self, digest, size=False, chunk_size=None, progress=None):
        """Return a BlobReader over a blob's verified bytes."""
        digest = _one_digest(digest)
        try:
            f = open(self._blob_path(digest), 'rb')
        except FileNotFoundError:
            raise self._not_found('blob %s' % digest) from None
        reader = BlobReader(_FileSource(f, os.fstat(f.fileno()).st_size),
                            digest, chunk_size, progress)
        return (reader, reader.size) if size else reader

    def del_blob(self, digest):
        """Delete a blob."""
        try:
            os.unlink(self._blob_path(digest))
        except FileNotFoundError:
            raise self._not_found('blob %s' % digest) from None

    def mount_blob(self, repo, digest):
        """Layouts cannot mount: always DXFMountFailed."""
        raise DXFMountFailed('an OCI layout cannot mount blobs', repo, digest)

    # -- manifests -----------------------------------------------------------

    def _index(self):
        path = os.path.join(self.path, 'index.json')
        try:
            with open(path, 'rb') as f:
                data = f.read(_MAX_MANIFEST + 1)
        except FileNotFoundError:
            return {'schemaVersion': 2, 'mediaType': _OCI_INDEX,
                    'manifests': []}
        index = _load_json(data, path)
        if not isinstance(index, dict) or not isinstance(
                index.get('manifests', []), list):
            raise DXFManifestError('%s/index.json is not an OCI index'
                                   % self.path)
        index.setdefault('manifests', [])
        return index

    def _update_index(self, alias, entry=None):
        """Drop ``alias``'s entries from index.json (None: an untagged
        entry's of the same digest) and append ``entry``, under a lock,
        atomically."""
        self._init()
        with _FileLock(os.path.join(self.path, '.dxf-lock')):
            index = self._index()
            index['manifests'] = [
                e for e in index['manifests'] if _ref_name(e) != alias
                or alias is None and e.get('digest') != entry['digest']]
            if entry is not None:
                index['manifests'].append(entry)
            self._write_file(os.path.join(self.path, 'index.json'),
                             json.dumps(index, sort_keys=True).encode('utf-8'))

    def _get_manifest(self, ref):
        _check_ref(ref)
        digest = ref
        media = None
        if ':' not in ref:
            found = [m for m in self._index()['manifests'] if _ref_name(m) == ref]
            if not found:
                raise self._not_found('alias %s' % ref)
            digest, _ = _check_descriptor(found[-1])
            media = found[-1].get('mediaType')
        if (self._blob_head(digest) or 0) > _MAX_MANIFEST:
            raise DXFManifestError('manifest %s is larger than 4 MiB' % digest)
        with self.pull_blob(digest) as reader:
            return reader.read(), media, digest

    def get_manifest_digest(self, alias):
        """Return the digest of an alias's manifest."""
        return self._get_manifest(alias)[2]

    def set_manifest(self, alias, manifest):
        """Store a manifest (str or bytes) under an alias; return its digest."""
        _check_ref(alias)
        data, m, media = _manifest_to_store(manifest)
        if ':' in alias:     # stored by digest: it must be the right one
            return self.push_blob(data=data, digest=alias)
        return self._add_entry(alias, data, m, media)

    def _add_entry(self, alias, data, m, media):
        digest = self.push_blob(data=data)
        entry = _descriptor(media, digest, len(data),
                            alias and {_REF_NAME_ANNOTATION: alias})
        if isinstance(m.get('artifactType'), str):
            entry['artifactType'] = m['artifactType']
        self._update_index(alias, entry)
        return digest

    def _put_referrer(self, manifest, subject):
        """Store a manifest with a subject: untagged in index.json, where
        readers find it by its subject (a layout has no fallback tag)."""
        self._add_entry(None, *_manifest_to_store(manifest))

    def _referrer_entries(self, digest, artifact_type=None):
        """The manifests in index.json whose subject is ``digest``."""
        found = {}
        for e in self._index()['manifests']:
            if isinstance(e, dict) and e.get('mediaType') in (_OCI_MANIFEST, _OCI_INDEX):
                data = self._get_manifest(_check_descriptor(e)[0])[0]
                m, media = _parse_manifest(data, e['mediaType'])
                subject = m.get('subject')
                if isinstance(subject, dict) and subject.get('digest') == digest:
                    found.setdefault(e['digest'], _referrer_entry(data, m, media))
        return list(found.values())

    def _set_alias_manifest(self, alias, manifest):
        self.push_blob(data=_EMPTY_BLOB, digest=_EMPTY_DIGEST)
        return self.set_manifest(alias, manifest)

    def del_alias(self, alias):
        """Remove an alias; return the digests of the blobs it named."""
        _check_alias(alias)
        named = self._named_by(alias)
        self._update_index(alias)
        return named

    def list_aliases(self, batch_size=None, iterate=False):
        """The aliases in the layout's index.json."""
        if not os.path.exists(os.path.join(self.path, 'oci-layout')):
            raise self._not_found('OCI layout')
        names = sorted(set(_ref_name(m) for m in self._index()['manifests'])
                       - {None})
        return iter(names) if iterate else names


def _ref_name(entry):
    """The alias an index.json entry names, or None (also for junk)."""
    annotations = entry.get('annotations') if isinstance(entry, dict) else None
    name = annotations.get(_REF_NAME_ANNOTATION) if isinstance(
        annotations, dict) else None
    return name if isinstance(name, str) else None


class _LayoutRoot:
    """A directory of OCI layouts (``DXF_HOST=oci:DIR``): its list-repos."""

    def __init__(self, root):
        self.root = root

    def list_repos(self, batch_size=None, iterate=False):
        """Subdirectories holding an OCI layout, as repository names."""
        found = []
        for directory, subdirs, files in os.walk(self.root):
            subdirs.sort()
            if 'oci-layout' in files:
                name = os.path.relpath(directory, self.root).replace(os.sep, '/')
                if _REPO_RE.match(name):
                    found.append(name)
                # Repositories nest (a, a/b); a layout's blobs are not one.
                subdirs[:] = [d for d in subdirs if d != 'blobs']
        return iter(found) if iterate else found

    def close(self):
        """Nothing to close."""


# =============================================================================
# 13. Parallel workers
# =============================================================================


# Set when the command line is interrupted (SIGINT, SIGTERM), or when the
# main thread is while it waits for workers: they stop at the next safe
# point, never in the middle of a request body (which would leave an upload
# session the registry can no longer cancel: distribution 2.8.2 answers 404
# to every later request on it), then cancel their sessions and remove
# their temporary files.
_STOP = threading.Event()


def _check_stop():
    if _STOP.is_set():
        raise KeyboardInterrupt


def _in_parallel(func, items, concurrency, transport=None):
    """``[func(item) for item in items]``, up to ``concurrency`` at a time in
    threads (the connection pool and the token cache are thread-safe).  After
    a failure no further item starts; the first failing item's error (in
    the order of ``items``) is raised once the running ones have ended.
    With ``transport``, the threads take part in the calling operation
    (its retry budget and token actions: _Operation).

    Called in the main thread, it always uses a worker thread, and an
    interrupt (KeyboardInterrupt) there stops the workers through _STOP and
    waits for them: a second one stops at once."""
    items = list(items)
    if not items or (threading.current_thread() is not threading.main_thread()
                     and (concurrency <= 1 or len(items) <= 1)):
        return [func(item) for item in items]
    if transport is not None:
        operation, plain = transport.current(), func

        def func(item):
            with transport.joined(operation):
                return plain(item)
    results = [None] * len(items)
    errors = []
    lock = threading.Lock()
    todo = iter(range(len(items)))
    running = [min(concurrency, len(items))]
    done = threading.Event()

    def work():
        while True:
            with lock:
                i = None if errors else next(todo, None)
                if i is None:
                    running[0] -= 1
                    if not running[0]:
                        done.set()
                    return
            try:
                results[i] = func(items[i])
            except BaseException as exc:     # handed to the calling thread
                with lock:
                    errors.append((i, exc))
    for _ in range(running[0]):
        threading.Thread(target=work, daemon=True).start()
    # Not Thread.join: interrupted, it may take a thread that is still
    # running for ended (3.11: it releases the lock the thread holds).
    try:
        done.wait()
    except BaseException:
        own = not _STOP.is_set()
        _STOP.set()
        try:
            done.wait()
        finally:
            if own:
                _STOP.clear()
        raise
    if errors:
        raise min(errors, key=lambda e: e[0])[1]
    return results


# =============================================================================
# 14. Directories as layers
# =============================================================================
# The layout oras-go's file store (content/file) writes and unpacks: a gzip
# tar whose entries are "<title>" and "<title>/...", annotated with the tar's
# digest (up to the end-of-archive marker) and io.deis.oras.content.unpack.


class _TarSink:
    """Where tarfile writes: the tar is hashed, compressed and passed on to
    ``out``; tarfile's padding to a 10 KiB record after the end-of-archive
    marker is dropped (``end``), as Go's tar writer has none and oras-go
    hashes up to it.  zlib writes the gzip header itself, the same from
    every Python: no name, no time (GzipFile's header changed in 3.7)."""

    def __init__(self, out):
        import zlib
        self.out = out
        self.zlib = zlib.compressobj(_GZIP_LEVEL, zlib.DEFLATED, 31)
        self.hash = _Hasher()
        self.size = 0
        self.end = None

    def write(self, data):
        _check_stop()       # packed in a worker thread: see _STOP
        if self.end is not None:
            data = data[:max(0, self.end - self.size)]
        self.hash.update(data)
        self.out.write(self.zlib.compress(data))
        self.size += len(data)
        return len(data)

    def tell(self):
        return self.size

    def close(self):
        self.out.write(self.zlib.flush())


def _tar_info():
    """tarfile.TarInfo, except that before 3.9 the device numbers in the
    header of an entry that is not a device were zeros: blank them as 3.9
    and later do, so one directory makes one digest whatever the Python."""
    import tarfile
    if sys.version_info >= (3, 9):
        return tarfile.TarInfo

    class TarInfo(tarfile.TarInfo):
        @staticmethod
        def _create_header(info, format, encoding, errors):
            buf = bytearray(tarfile.TarInfo._create_header(
                info, format, encoding, errors))
            if info.get('type') not in (tarfile.CHRTYPE, tarfile.BLKTYPE):
                buf[329:345] = bytes(16)
                buf[148:156] = b'%06o\0 ' % (sum(buf[:148]) + 256
                                             + sum(buf[156:512]))
            return bytes(buf)
    return TarInfo


def _pack_directory(directory, name):
    """Write ``directory`` as a gzip tar into a temporary file; return its
    path and the uncompressed tar's digest.

    Deterministic: entries sorted, owner 0 with no names, time 0, modes
    0755 or 0644 (0777 for symbolic links), gzip header without name or
    time, so the same content makes the same bytes (with the same zlib)
    on every Python.
    """
    import stat
    import tarfile
    import tempfile
    TarInfo = _tar_info()
    fd, path = tempfile.mkstemp(prefix='dxf-', suffix='.tar.gz')
    try:
        with os.fdopen(fd, 'wb') as raw:
            sink = _TarSink(raw)
            with tarfile.open(fileobj=sink, mode='w', format=tarfile.PAX_FORMAT,
                              encoding='utf-8', tarinfo=TarInfo) as tar:
                stack = [(directory, name)]
                while stack:
                    source, arcname = stack.pop()
                    st = os.lstat(source)
                    info = TarInfo(arcname)
                    info.mtime = info.uid = info.gid = 0
                    info.uname = info.gname = ''
                    info.mode = 0o755 if st.st_mode & 0o111 else 0o644
                    if stat.S_ISDIR(st.st_mode):
                        info.type, info.mode = tarfile.DIRTYPE, 0o755
                        tar.addfile(info)
                        # depth first, each directory's entries sorted
                        stack.extend((os.path.join(source, child),
                                      arcname + '/' + child)
                                     for child in sorted(os.listdir(source),
                                                         reverse=True))
                    elif stat.S_ISREG(st.st_mode):
                        info.size = st.st_size
                        with _open_input(source) as f:
                            tar.addfile(info, f)
                    elif stat.S_ISLNK(st.st_mode):
                        info.type, info.mode = tarfile.SYMTYPE, 0o777
                        info.linkname = os.readlink(source)
                        tar.addfile(info)
                    else:
                        raise DXFInputError('cannot store %s: not a file, '
                                            'directory or symbolic link'
                                            % source)
                sink.end = tar.offset + 2 * tarfile.BLOCKSIZE
            sink.close()
    except BaseException as exc:
        os.unlink(path)
        if isinstance(exc, OSError):
            raise DXFInputError('cannot read %s: %s' % (
                directory, _exc_text(exc))) from exc
        raise
    return path, sink.hash.digest()


def _lstat(path):
    """os.lstat, or None when nothing is at ``path``."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


class _HashingReader:
    """Hashes what is read from ``f``; remembers the hash before each of
    the last few reads, to give the digest of any recent prefix."""

    def __init__(self, f):
        self.f = f
        self.hash = _Hasher()
        self.pos = 0
        self.recent = []       # (start, hash before, data)

    def read(self, n=-1):
        data = self.f.read(n)
        self.recent = self.recent[-3:] + [(self.pos, self.hash.h.copy(), data)]
        self.hash.update(data)
        self.pos += len(data)
        return data

    def digest_at(self, end):
        """``sha256:...`` of the first ``end`` bytes read (None if too old)."""
        if end == self.pos:
            return self.hash.digest()
        for start, h, data in self.recent:
            if start <= end <= start + len(data):
                return _Hasher(data=data[:end - start], h=h.copy()).digest()
        return None


def _safe_name(title):
    """A title annotation usable as a file name in the output directory (or
    a directory layer's name): one plain, visible, printable component."""
    if (not isinstance(title, str) or title in ('', '.', '..')
            or title.startswith('.') or '/' in title or '\\' in title
            or '\0' in title or not title.isprintable()):
        return None
    return title


class _LayerPolicy:
    """Where a directory layer's entries may land: dxf's extraction filter,
    shaped like tarfile's (3.12's ``data_filter``, which 3.6 and 3.7 lack).

    Nothing is written through a symbolic link: each parent is checked
    with lstat as it is made, files are created with O_EXCL|O_NOFOLLOW.
    Symbolic links must be relative and stay inside ``tree``, lexically and
    once all are made (chains); hard links must name a file unpacked
    before; devices, FIFOs and absolute or ``..`` names are refused.  Each
    refusal is a DXFUnsafeArchiveError carrying the entry (``member``).
    The layer's own name, a title, follows ``_safe_name``'s stricter rule.
    """

    def __init__(self, tree, name, label):
        self.tree, self.name, self.label = tree, name, label
        self.links = []          # (member, path) of the symbolic links made

    def unsafe(self, member, why):
        return DXFUnsafeArchiveError('layer %s: entry %r %s' % (
            self.label, _printable(member.name), why), member=member.name)

    def inside(self, member, path):
        """``path`` (an archive name) as components below the layer's name."""
        if path.startswith('/') or '\0' in path or '\\' in path:
            raise self.unsafe(member, 'is an absolute or unusual path')
        parts = [p for p in path.split('/') if p not in ('', '.')]
        if '..' in parts:
            raise self.unsafe(member, 'leads out of the directory (..)')
        if not parts or parts[0] != self.name:
            raise self.unsafe(member, 'is not under %s/' % self.name)
        return parts[1:]

    def parent_of(self, member, parts):
        """Make (or check) the directories above ``parts``; its path."""
        import stat
        path = self.tree
        for part in parts[:-1]:
            path = os.path.join(path, part)
            st = _lstat(path)
            if st is None:
                os.mkdir(path, 0o755)
            elif not stat.S_ISDIR(st.st_mode):
                raise self.unsafe(member, 'goes through a symbolic link or file')
        return os.path.join(path, parts[-1])

    def clear(self, member, path):
        """Remove what is at ``path`` (not a directory) to replace it; the
        directory's stat if one is there and ``member`` is one too."""
        import stat
        st = _lstat(path)
        if st is None:
            return None
        if stat.S_ISDIR(st.st_mode):
            if member.isdir():
                return st
            raise self.unsafe(member, 'replaces a directory')
        os.unlink(path)
        return None

    def extract(self, tar, member):
        """Write one entry below the tree, or refuse it."""
        import stat
        parts = self.inside(member, member.name)
        if not parts:
            if not member.isdir():
                raise self.unsafe(member, 'is not a directory')
            return
        path = self.parent_of(member, parts)
        existing = self.clear(member, path)
        if member.isdir():
            if existing is None:
                os.mkdir(path, 0o755)
        elif member.isreg():
            mode = 0o755 if member.mode & 0o111 else 0o644
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL
                         | getattr(os, 'O_NOFOLLOW', 0), mode)
            with os.fdopen(fd, 'wb') as out:
                source = tar.extractfile(member)
                for chunk in iter(lambda: source.read(_CHUNK_SIZE), b''):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())    # on disk before the rename
        elif member.issym():
            target = member.linkname
            up = os.path.normpath(os.path.join(*parts[:-1], target))
            if (target.startswith('/') or up == '..'
                    or up.startswith('../') or '\0' in target):
                raise self.unsafe(member, 'links out of the directory')
            os.symlink(target, path)
            self.links.append((member, path))
        elif member.islnk():
            linked = self.inside(member, member.linkname)
            if not linked:
                raise self.unsafe(member, 'is a hard link to a directory')
            source = self.parent_of(member, linked)
            st = _lstat(source)
            if st is None or not stat.S_ISREG(st.st_mode):
                raise self.unsafe(member, 'is a hard link to no file unpacked before it')
            os.link(source, path)
        else:
            raise self.unsafe(member, 'is a device or another special file')

    def check_links(self):
        """Chains of symbolic links, now all made, stay inside the tree."""
        real_tree = os.path.realpath(self.tree)
        for member, path in self.links:
            real = os.path.realpath(path)
            if real != real_tree and not real.startswith(real_tree + os.sep):
                raise self.unsafe(member, 'links out of the directory')


def _unpack_layer(archive, tree, name, tar_digest, label):
    """Unpack the gzip tar file ``archive`` (entries ``name/...``) into the
    new directory ``tree`` under _LayerPolicy, and check the tar's digest."""
    import gzip
    import tarfile
    import zlib
    policy = _LayerPolicy(tree, name, label)
    try:
        with open(archive, 'rb') as raw, gzip.GzipFile(fileobj=raw) as gz:
            reader = _HashingReader(gz)
            tar = tarfile.open(fileobj=reader, mode='r|', encoding='utf-8')
            for member in tar:
                policy.extract(tar, member)
            end = tar.offset + 2 * tarfile.BLOCKSIZE
            for _ in iter(lambda: reader.read(_CHUNK_SIZE), b''):
                pass
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DXFIntegrityError('layer %s is not a gzip tar: %s' % (
            label, _exc_text(exc))) from exc
    except OSError as exc:       # a full disk, say: the caller removes it all
        raise DXFError('layer %s: cannot unpack it: %s' % (label, _exc_text(exc))) from exc
    policy.check_links()
    if tar_digest and reader.hash.digest() != tar_digest:    # else up to the tar's end
        _verify(reader.digest_at(end), tar_digest)


# =============================================================================
# 15. Command line
#     dxf COMMAND REPO ARGS...; settings come from the environment:
# =============================================================================

_ENV_VARS = (
    ('DXF_HOST', 'registry host[:port] (required), or oci:DIRECTORY'),
    ('DXF_INSECURE', '1: plain http instead of https'),
    ('DXF_USERNAME', 'user to authenticate as'),
    ('DXF_PASSWORD', "that user's password"),
    ('DXF_AUTHORIZATION', 'a raw Authorization header value instead'),
    ('DXF_TOKEN', 'a bearer token (e.g. from "dxf auth") instead'),
    ('DXF_AUTH_HOST', "host to use instead of the token realm's"),
    ('DXF_TLSVERIFY', 'CA bundle to verify the registry with (else REQUESTS_CA_BUNDLE, '
     "else CURL_CA_BUNDLE, else the system's store)"),
    ('DXF_SKIPTLSVERIFY', '1: do not verify TLS certificates'),
    ('DXF_ALLOW_INSECURE_AUTH', '1: allow credentials over plain http'),
    ('DXF_TIMEOUT', 'seconds an answer (each MiB of a blob) may take (60)'),
    ('DXF_RETRIES', 'retries of a failed request (5; 0 turns them off)'),
    ('DXF_PLATFORM', 'os/arch[/variant] for multi-platform aliases'),
    ('DXF_PROGRESS', '1: show progress on stderr; 0: never (default: tty)'),
    ('DXF_BLOB_INFO', '1: pull-blob prints "digest size" before each blob'),
    ('DXF_CHUNK_SIZE', 'bytes per read when pulling (default 1 MiB)'),
    ('DXF_PUSH_CHUNK_SIZE', 'bytes per upload request above which a blob goes up in '
     'resumable chunks (default 64 MiB, at least 1 MiB; halved by itself after a 413)'),
    ('DXF_CONCURRENCY', 'blobs moving at once in one command (default 4)'),
    ('DXF_CERT', "a TLS client certificate (for the registry's origin only)"),
    ('DXF_KEY', "its key, unless it is in DXF_CERT"),
    ('DXF_DEBUG', '1: trace requests on stderr, tracebacks on errors'))
_EXIT_INTERRUPTED = 130
_EXIT_INTERNAL = 70              # EX_SOFTWARE: a bug in dxf
_PLATFORM_RE = re.compile(r'[a-z0-9_.-]+/[a-z0-9_.-]+(?:/[a-z0-9_.-]+)?\Z')


class _UsageError(Exception):
    """A bad command line or environment: exit EINVAL."""


class _Exit(Exception):
    """argparse wants to exit (after --help or --version)."""

    def __init__(self, status):
        super().__init__(status)
        self.status = status


def _env_flag(environ, name, default=False):
    value = environ.get(name, '').strip().lower()
    if not value:
        return default
    if value in ('1', 'true', 'yes', 'on'):
        return True
    if value in ('0', 'false', 'no', 'off'):
        return False
    raise _UsageError('%s must be 1 or 0, not %r' % (name, _printable(value)))


def _env_number(environ, name, kind, default, zero=False, high=1e6):
    value = environ.get(name, '').strip()
    if not value:
        return default
    try:
        number = kind(value)
    except ValueError:
        number = -1
    low = 0 if zero else 1 if kind is int else 1e-3
    if not low <= number <= high:     # NaN fails too
        raise _UsageError('%s must be a %s from %g to %d, not %r' % (name, 'whole number'
                          if kind is int else 'number', low, high, _printable(value)))
    return number


class _Settings:
    """Every DXF_* variable, read and checked in one place."""

    @classmethod
    def from_environ(cls, environ, stdout=None, stderr=None):
        s = cls()
        s.environ, s.stdout, s.stderr = environ, stdout, stderr
        s.host = environ.get('DXF_HOST', '').strip()
        s.insecure = _env_flag(environ, 'DXF_INSECURE')
        for name in ('username', 'password', 'authorization', 'token', 'auth_host',
                     'platform'):     # strings, unset if empty
            setattr(s, name, environ.get('DXF_' + name.upper()) or None)
        s.tlsverify = not _env_flag(environ, 'DXF_SKIPTLSVERIFY')
        if s.tlsverify:
            bundle = (('DXF_TLSVERIFY', environ['DXF_TLSVERIFY'])
                      if environ.get('DXF_TLSVERIFY') else _ca_bundle_variable(environ))
            if bundle:
                name, s.tlsverify = bundle
                if not os.path.isfile(s.tlsverify):
                    raise _UsageError('%s: no such file: %s' % (name, s.tlsverify))
        s.cert = environ.get('DXF_CERT') and (environ['DXF_CERT'], environ.get('DXF_KEY') or None)
        s.allow_insecure_auth = _env_flag(environ, 'DXF_ALLOW_INSECURE_AUTH')
        s.timeout = _env_number(environ, 'DXF_TIMEOUT', float, _DEFAULT_TIMEOUT)
        s.retries = _env_number(environ, 'DXF_RETRIES', int, _DEFAULT_RETRIES,
                                zero=True, high=100)
        if s.platform and not _PLATFORM_RE.match(s.platform):
            raise _UsageError('DXF_PLATFORM must look like os/arch[/variant], '
                              'not %r' % _printable(s.platform))
        s.progress = _env_flag(environ, 'DXF_PROGRESS', None)
        if s.progress is None:
            s.progress = hasattr(stderr, 'isatty') and stderr.isatty()
        s.progress_printer = _Progress(stderr) if s.progress else None
        s.blob_info = _env_flag(environ, 'DXF_BLOB_INFO')
        s.chunk_size = _env_number(environ, 'DXF_CHUNK_SIZE', int, _CHUNK_SIZE,
                                   high=1 << 30)
        s.push_chunk_size = _env_number(environ, 'DXF_PUSH_CHUNK_SIZE', int,
                                        None, high=1 << 40)
        s.concurrency = _env_number(environ, 'DXF_CONCURRENCY', int,
                                    _DEFAULT_CONCURRENCY, high=64)
        s.debug = _env_flag(environ, 'DXF_DEBUG')
        # sent: registry host -> where its credentials came from (source: dxf login's)
        s.sent, s.source, s.warned, s.lock = {}, None, set(), threading.Lock()
        return s

    def open(self, repo, host=None):
        """The store these settings describe: a DXF for ``repo`` (a DXFBase
        when it is None), or an OCILayout under an ``oci:`` DXF_HOST."""
        host = host or self.host
        if not host:
            raise _UsageError('DXF_HOST is not set (the registry host[:port], '
                              'or oci:DIRECTORY)')
        if host.startswith('oci:'):
            root = _oci_root(host)
            if repo is None:
                if not os.path.isdir(root):
                    there = os.path.exists(root)
                    raise (DXFInputError if there else DXFNotFoundError)('%s: %s' % (
                        host, 'not a directory' if there else 'no such directory'))
                return _LayoutRoot(root)
            return _oci_layout(root, repo, flat=False)

        def auth(dxf, response):
            username, password, identity = self.username, self.password, None
            source = self.credential_source()
            if not source:
                # docker login's credentials, looked up only when needed
                found = _docker_config_credentials(dxf._host, self.environ)
                if found and found[0] == '<token>':
                    identity = found[1]
                elif found:
                    username, password = found
                source = found and 'the docker config for ' + dxf._host
            self.sent[dxf._host] = source
            dxf.authenticate(username, password, response=response,
                             authorization=self.authorization,
                             identity_token=identity)
        # DXF_TOKEN comes from DXF_HOST's token service: never show it to
        # another registry (copy-alias to HOST/REPO).
        token = self.token if host == self.host else None
        options = dict(auth=None if token else auth, insecure=self.insecure,
                       auth_host=self.auth_host, tlsverify=self.tlsverify,
                       timeout=self.timeout, retries=self.retries,
                       proxies=self.environ, cert=self.cert,
                       allow_insecure_auth=self.allow_insecure_auth)
        dxf = DXFBase(host, **options) if repo is None else DXF(
            host, repo, **options)
        if self.debug:
            def trace(line):
                printer = getattr(self, 'progress_printer', None)
                if printer:         # not at the end of the progress line
                    printer.interrupt()
                self.stderr.write('dxf: %s\n' % line)
            dxf._transport.trace = trace
        dxf._transport.warn = self.warning
        if token:
            dxf.token = token
            self.sent[host] = 'DXF_TOKEN (tokens expire: get a new one with dxf auth)'
        return dxf

    def credential_source(self):
        """Where the credentials given come from, for a refusal's message."""
        return self.source or (
            'DXF_AUTHORIZATION' if self.authorization else
            'DXF_USERNAME' + ('' if self.password else ' (DXF_PASSWORD is not set)')
            if self.username else
            'DXF_PASSWORD (DXF_USERNAME is not set)' if self.password else None)

    def warning(self, text):
        """Each registry Warning once per command (on stderr)."""
        with self.lock:
            if text not in self.warned:
                self.warned.add(text)
                _warn(self, text)

    def hint(self, exc):
        """What a refusal (401/403) by a registry this command spoke to means."""
        host = getattr(exc, 'registry', None) or urllib.parse.urlsplit(exc.url or '').netloc
        source = self.sent.get(host)
        return ('; %s refused the credentials from %s' % (host, source) if source else
                '; no credentials were sent to %s: set DXF_USERNAME and DXF_PASSWORD, '
                'or run dxf login %s' % (host, host))


class _ProgressLine:
    """One blob's progress."""

    def __init__(self, now):
        self.done = self.drawn = self.shown = 0
        self.start = now
        self.digest = self.total = None
        self.ended = False


class _Progress:
    """One line per blob on stderr, redrawn in place: bytes, rate, ETA.

    Each blob moving has a line of its own (a ranged pull's threads draw
    one), under the earlier ones: the cursor stays on the bottom line and
    goes up to redraw another.  A blob's line is left in its final state
    when it ends."""

    def __init__(self, stream):
        self.stream = stream
        self._lock = threading.Lock()
        self._lines = {}         # digest (else thread) -> _ProgressLine
        self._rows = []          # _ProgressLines on screen, top down, from the first still moving
        try:
            self.width = os.get_terminal_size(stream.fileno()).columns or 80   # 0: unknown
        except (AttributeError, ValueError, OSError):
            self.width = 80

    def __call__(self, digest, chunk, total=None):
        now = time.time()
        key = digest or threading.get_ident()
        with self._lock:
            line = self._lines.get(key)
            if not chunk or line is None:          # a new blob starts
                if line is not None:
                    self._end(line)
                line = self._lines[key] = _ProgressLine(now)
            line.done += len(chunk)
            line.digest, line.total = digest, total
            if now - line.drawn < 0.2 and (total is None or line.done < total):
                return
            self._draw(line, now)

    def _draw(self, line, now):
        line.drawn, line.shown = now, line.done
        if line not in self._rows:       # its first drawing: a new bottom line
            self.stream.write('\n' if self._rows else '')
            self._rows.append(line)
        rate = line.done / max(now - line.start, 1e-6)
        name = line.digest or 'upload'      # 8 hex digits on a narrow terminal, so
        text = '%s %s' % (name[:19] if self.width > 60 else name.split(':')[-1][:8],
                          _human(line.done))        # the percentage fits in 40 columns
        total = line.total
        if total:
            text += ' / %s %3d%%' % (_human(total), 100 * line.done // max(total, 1))
        text += ' %s/s' % _human(rate)
        if total and rate and line.done < total:
            text += ' ETA %ds' % -(-(total - line.done) // rate)   # round up
        up = len(self._rows) - 1 - self._rows.index(line)
        move = ('\x1b[%d%%s' % up) if up else '%.0s'    # cursor up, then back down
        # Wider than the terminal, each redraw would leave a wrapped line.
        self.stream.write(move % 'A' + '\r' + text[:self.width - 1] + '\x1b[K' + move % 'B')
        self.stream.flush()

    def _end(self, line):
        if line.done:
            if line.shown != line.done:        # the last bytes are not shown yet
                self._draw(line, time.time())
            line.ended = True
            while self._rows and self._rows[0].ended:    # final: never redrawn
                self._rows.pop(0)
            self.stream.write('' if self._rows else '\n')     # all final: a new line
            self.stream.flush()

    def interrupt(self):
        """Start a line below the ones drawn, so that an error gets a line
        of its own.  No lock: a signal handler may call this while its
        thread holds it."""
        if self._rows:
            self._rows = []
            self.stream.write('\n')

    def finish(self, digest):
        """End this blob's line."""
        with self._lock:
            line = self._lines.pop(digest, None)
            if line is not None:
                self._end(line)

    def finish_all(self):
        """End every line (once the threads that drew them are done)."""
        with self._lock:
            lines, self._lines = self._lines, {}
            for line in lines.values():
                self._end(line)


def _human(n):
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if n < 1024 or unit == 'GiB':
            return ('%d %s' if unit == 'B' else '%.1f %s') % (n, unit)
        n /= 1024.0


def _warn(settings, text):
    settings.stderr.write('dxf: warning: %s\n' % _printable(text, 1000))


def _write_line(out, text):
    out.write(text.encode('utf-8') + b'\n')


def _emit(out, settings, text, desc=None, **fields):
    """One line of a command's data: ``text``, or with --format json one
    JSON object: the descriptor's known fields, its title, and ``fields``."""
    if settings.json:
        doc = {k: desc[k] for k in ('digest', 'size', 'mediaType', 'annotations')
               if desc and desc.get(k) is not None}
        doc['title'] = doc.get('annotations', {}).get(_TITLE_ANNOTATION)
        doc.update(fields)
        text = json.dumps({k: v for k, v in doc.items() if v is not None}, sort_keys=True)
    if text is not None:      # (pull-blob -o prints nothing as text)
        _write_line(out, text)


def _alias_arg(arg):
    if not arg.startswith('@'):
        raise _UsageError('invalid alias %r: aliases start with @'
                          % _printable(arg))
    return _check_alias(arg[1:])


def _read_manifest(stdin):
    """The manifest a command given no DIGEST|@ALIAS reads from stdin."""
    if getattr(stdin, 'isatty', bool)():     # not a silent wait for a paste
        raise _UsageError('no DIGEST or @ALIAS given: name one, or pipe a manifest in')
    manifest = stdin.read(_MAX_MANIFEST + 1)
    if len(manifest) > _MAX_MANIFEST or not manifest.strip():
        raise DXFInputError('stdin holds no manifest (%s): give DIGEST or @ALIAS' % (
            'empty' if not manifest.strip() else 'larger than 4 MiB'))
    return manifest


def _resolve_refs(dxf, refs, settings, stdin):
    """Expand digests and @aliases (or a manifest on stdin) into the layer
    descriptors they name, in order (a digest: ``{'digest': digest}``)."""
    if not refs:
        return dxf.get_descriptors(manifest=_read_manifest(stdin),
                                   platform=settings.platform)
    blobs = []
    for ref in refs:
        if ref.startswith('@'):
            blobs.extend(dxf.get_descriptors(_alias_arg(ref),
                                             platform=settings.platform))
        else:
            split_digest(ref)
            blobs.append({'digest': ref})
    return blobs


def _subject_arg(arg):
    """attach's and referrers' SUBJECT: @ALIAS or a manifest digest."""
    return _alias_arg(arg) if arg.startswith('@') else split_digest(arg) and arg


def _manifest_options(args):
    """--artifact-type, --annotation(-file) and --config as keyword
    arguments of push_blobs, set_alias and attach."""
    if args.annotation and args.annotation_file:
        raise _UsageError('give --annotation or --annotation-file, not both')
    pairs = [item.partition('=') for item in args.annotation or ()]
    notes = dict((key, value) for key, _, value in pairs)
    if len(notes) < len(pairs) or not all(key and sep for key, sep, _ in pairs):
        raise _UsageError('give --annotation KEY=VALUE, each KEY once')
    annotations = {'$manifest': notes} if notes else None
    if args.annotation_file:
        with _open_input(args.annotation_file) as f:
            data = f.read(_MAX_MANIFEST)
        try:
            annotations = _load_json(data, args.annotation_file)
        except DXFManifestError as exc:
            raise DXFInputError(str(exc)) from None
    if args.artifact_type and not _MEDIA_TYPE_RE.match(args.artifact_type):
        raise _UsageError('invalid media type %r' % _printable(args.artifact_type))
    path, sep, media = (args.config or '').rpartition(':')
    return dict(artifact_type=args.artifact_type, annotations=annotations,
                config=args.config and ((path, media) if sep and _MEDIA_TYPE_RE.match(
                    media) else (args.config, None)))


# The commands, _cmd_<name>(store, args, settings, out, stdin): what each
# does, and its arguments, are in _COMMANDS below.


def _cmd_auth(dxf, args, settings, out, stdin):
    if not isinstance(dxf, DXFBase):
        raise _UsageError('auth needs a registry, not an OCI layout')
    for action in args.actions:
        if action not in _ACTIONS:
            raise _UsageError('invalid action %r (pull, push, delete or *)'
                              % _printable(action))
    settings.sent[dxf._host] = settings.credential_source()
    token = dxf.authenticate(settings.username, settings.password,
                             actions=args.actions or None,
                             authorization=settings.authorization)
    if token:
        _write_line(out, token)


def _cmd_push_blob(dxf, args, settings, out, stdin):
    """dxf push-blob REPO FILE... [@ALIAS]: upload, print the digests."""
    files = args.files
    alias = None
    if len(files) > 1 and files[-1].startswith('@'):
        alias = _alias_arg(files.pop())
    options = _manifest_options(args)
    if any(options.values()) and not alias:
        raise _UsageError('--artifact-type, --annotation(-file) and --config '
                          'describe an alias\'s manifest: give @ALIAS')
    if len(files) > 1 or alias or os.path.isdir(files[0]) or settings.json:
        # With an alias, a single file goes the same way: its config blob
        # is looked for beside it, not after a refused manifest PUT.
        return _push_many(dxf, files, alias, settings, out, stdin, options)
    progress = settings.progress_printer
    if files[0] == '-':
        digest = dxf.push_blob(data=iter(lambda: stdin.read(_CHUNK_SIZE), b''),
                               progress=progress,
                               chunk_size=settings.push_chunk_size)
    else:
        digest = dxf.push_blob(files[0], progress=progress,
                               chunk_size=settings.push_chunk_size)
    if progress:
        progress.finish_all()
    _write_line(out, digest)


def _push_many(dxf, files, alias, settings, out, stdin, options, subject=None):
    """push-blob of several files, or of a directory, and attach: in
    parallel."""
    if files.count('-') > 1:
        raise _UsageError('- (stdin) can be given only once')
    for name in files:
        if name != '-' and not os.path.exists(name):
            raise DXFInputError('cannot read %s: no such file or directory'
                                % name)
    progress = settings.progress_printer
    items = [stdin if f == '-' else f for f in files]
    try:
        if subject:
            digest = dxf.attach(subject, items, progress=progress,
                                concurrency=settings.concurrency, **options)
        else:
            layers = dxf.push_blobs(items, alias=alias, progress=progress,
                                    concurrency=settings.concurrency,
                                    descriptors=True,
                                    chunk_size=settings.push_chunk_size, **options)
    finally:
        if progress:
            progress.finish_all()
    if subject:
        return _emit(out, settings, digest, digest=digest)
    for path, layer in zip(files, layers):
        _emit(out, settings, layer['digest'], layer, path=path)


def _copy_blob(dxf, digest, out, settings):
    progress = settings.progress_printer
    with dxf.pull_blob(digest, chunk_size=settings.chunk_size,
                       progress=progress) as reader:
        if settings.blob_info:
            _write_line(settings.stdout, '%s %s' % (digest, reader.size))
        reader.copy_to(out)
    if progress:
        progress.finish(digest)


def _pull_file(dxf, digest, path, settings, concurrency):
    progress = settings.progress_printer
    size = dxf.pull_blob_to(digest, path, progress, concurrency)
    if settings.blob_info:
        _write_line(settings.stdout, '%s %s' % (digest, size))
    if progress:
        progress.finish(digest)


def _cmd_pull_blob(dxf, args, settings, out, stdin):
    """dxf pull-blob REPO [-o PATH] [REF...]: write the blobs out, verified."""
    if settings.json and not args.output:
        raise _UsageError('--format json needs -o PATH: stdout carries the blobs')
    if args.output:
        _check_output(args.output)
        if os.path.isdir(args.output):
            return _pull_to_directory(dxf, args, settings, stdin, out)
    blobs = _resolve_refs(dxf, args.refs, settings, stdin)
    if args.output and len(blobs) == 1:
        _pull_file(dxf, blobs[0]['digest'], args.output, settings,
                   settings.concurrency)
    elif args.output:
        with _AtomicFile(args.output) as f:
            for desc in blobs:
                _copy_blob(dxf, desc['digest'], f, settings)
    else:
        for desc in blobs:
            _copy_blob(dxf, desc['digest'], out, settings)
    for desc in blobs if args.output else ():
        _emit(out, settings, None, desc, path=args.output)
    out.flush()


def _pull_to_directory(dxf, args, settings, stdin, out):
    """pull-blob -o DIR: DXF.pull_blobs, then what it wrote, one per blob."""
    progress = settings.progress_printer
    try:
        written = dxf.pull_blobs(_resolve_refs(dxf, args.refs, settings, stdin),
                                 args.output, progress=progress,
                                 concurrency=settings.concurrency)
    finally:
        if progress:
            progress.finish_all()
    for path, desc in written:
        title = _safe_name((desc.get('annotations') or {}).get(_TITLE_ANNOTATION))
        if title and os.path.basename(path) != title:
            _warn(settings, 'two blobs are titled %s: %s is saved as %s' % (
                _printable(title), desc['digest'][:19], os.path.basename(path)))
        if settings.blob_info:
            _write_line(settings.stdout, '%s %s' % (desc['digest'], desc['size']))
        _emit(out, settings, None, desc, path=path)


def _check_output(path):
    """-o PATH: a PATH ending in a separator is a directory, made if need be;
    otherwise PATH's directory must exist.  Errors name the path."""
    if path.endswith(os.sep) or (os.altsep and path.endswith(os.altsep)):
        bare = path.rstrip('/' + os.sep) or path
        if os.path.exists(bare) and not os.path.isdir(bare):
            raise DXFInputError('-o %s: %s is not a directory' % (path, bare))
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise DXFInputError('-o %s: cannot create the directory: %s'
                                % (path, _exc_text(exc))) from exc
    elif not os.path.isdir(os.path.dirname(path) or '.'):
        raise DXFInputError('-o %s: directory %s does not exist'
                            % (path, os.path.dirname(path)))


def _cmd_blob_size(dxf, args, settings, out, stdin):
    for ref in args.refs or [None]:
        blobs = _resolve_refs(dxf, [ref] if ref else [], settings, stdin)
        size = sum(desc['size'] if 'size' in desc else dxf.blob_size(desc['digest'])
                   for desc in blobs)
        _emit(out, settings, str(size), None, size=size, ref=ref)


def _cmd_mount_blob(dxf, args, settings, out, stdin):
    alias = _alias_arg(args.alias) if args.alias else None
    digest = dxf.mount_blob(args.from_repo, args.digest)
    if alias:
        dxf.set_alias(alias, digest)
    _write_line(out, digest)


def _cmd_del_blob(dxf, args, settings, out, stdin):
    for desc in _resolve_refs(dxf, args.refs, settings, stdin):
        dxf.del_blob(desc['digest'])


def _cmd_set_alias(dxf, args, settings, out, stdin):
    alias = _check_alias(args.alias)
    digests, names = [], []
    for ref in args.refs:
        if os.sep in ref or (os.altsep and os.altsep in ref):
            digests.append(hash_file(ref))
            names.append(os.path.basename(ref))
        else:
            split_digest(ref)
            digests.append(ref)
            names.append(None)
    try:
        manifest = dxf.set_alias(alias, *digests, names=names,
                                 concurrency=settings.concurrency,
                                 **_manifest_options(args))
    except DXFNotFoundError as exc:
        for ref, digest, name in zip(args.refs, digests, names):
            if name is not None and digest in str(exc):
                exc.args = ('%s (%s) is not in %s: push it first'
                            % (ref, digest, args.repo),)
                break
        raise
    out.write(manifest.encode('utf-8'))


def _cmd_get_alias(dxf, args, settings, out, stdin):
    for alias in args.aliases or [None]:
        for desc in _resolve_refs(dxf, alias and ['@' + _check_alias(alias)], settings, stdin):
            _emit(out, settings, desc['digest'], desc, alias=alias)


def _cmd_del_alias(dxf, args, settings, out, stdin):
    for alias in args.aliases:
        for digest in dxf.del_alias(_check_alias(alias)):
            _write_line(out, digest)


def _cmd_get_digest(dxf, args, settings, out, stdin):
    for alias in args.aliases or [None]:      # none: a manifest on stdin
        manifest = None if alias else _read_manifest(stdin)
        _write_line(out, dxf.get_digest(alias and _check_alias(alias), manifest=manifest,
                                        platform=settings.platform))


def _cmd_get_manifest(dxf, args, settings, out, stdin):
    for alias in args.aliases:
        out.write(dxf.get_manifest(_check_ref(alias),
                                   platform=settings.platform).encode('utf-8'))


def _cmd_list_aliases(dxf, args, settings, out, stdin):
    for alias in dxf.list_aliases(iterate=True):
        if not _REFERRERS_TAG_RE.match(alias):     # not an alias: see attach
            _emit(out, settings, alias, alias=alias)


def _cmd_attach(dxf, args, settings, out, stdin):
    _push_many(dxf, args.files, None, settings, out, stdin,
               _manifest_options(args), _subject_arg(args.subject))


def _cmd_referrers(dxf, args, settings, out, stdin):
    for entry in dxf.referrers(_subject_arg(args.subject), args.artifact_type):
        _emit(out, settings, '%s %s' % (entry['digest'], _printable(
            entry.get('artifactType') or '-')), entry,
            artifactType=entry.get('artifactType'))


def _cmd_resolve(dxf, args, settings, out, stdin):
    for alias in args.aliases:
        digest = dxf.resolve(_check_alias(alias))
        _emit(out, settings, digest, digest=digest, alias=alias)


def _cmd_copy_alias(dxf, args, settings, out, stdin):
    dest = args.dest
    if dest.startswith(('.', '/')):
        raise _UsageError('DEST %r is not a repository; for a directory say '
                          'oci:%s' % (_printable(dest), _printable(dest)))
    if dest.startswith('oci:'):
        target = _oci_layout(_oci_root(dest), args.repo, flat=True)
    else:
        first, _, rest = dest.partition('/')
        # docker's rule: a first component with a dot or a port is a host
        if rest and ('.' in first or ':' in first or first == 'localhost'):
            target = settings.open(rest, host=first)
        else:
            target = settings.open(dest)
    with target:
        digest = dxf.copy_alias(_check_alias(args.alias), target, args.dest_alias and
                                _check_alias(args.dest_alias),
                                concurrency=settings.concurrency)
    _emit(out, settings, digest, None, digest=digest, target=dest,
          alias=args.dest_alias or args.alias)


def _oci_root(spec):
    """The directory of ``oci:DIR``; not '.' for an empty one (an unset $DIR)."""
    if spec == 'oci:':
        raise _UsageError('oci: needs a directory (oci:DIR); is a variable in it unset?')
    return spec[len('oci:'):]


def _oci_layout(root, repo, flat):
    """The OCILayout ``oci:ROOT`` means for ``repo``, the same for DXF_HOST
    and copy-alias: ROOT itself when it is a layout (as skopeo, oras and
    copy-alias write it), else ROOT/REPO when that is one; a new layout is
    ROOT itself with ``flat`` (copy-alias, as skopeo), else ROOT/REPO."""
    nested = os.path.join(root, *_check_repo(repo).split('/'))
    if os.path.exists(os.path.join(root, 'oci-layout')):
        return OCILayout(root)
    if os.path.exists(os.path.join(nested, 'oci-layout')):
        return OCILayout(nested)
    return OCILayout(root if flat else nested)


def _cmd_list_repos(dxf, args, settings, out, stdin):
    for repo in dxf.list_repos(iterate=True):
        _emit(out, settings, repo, repo=repo)


def _cmd_login(dxf, args, settings, out, stdin):
    """dxf login HOST [-u USER] [--password-stdin]: check the credentials with
    an authenticated GET /v2/, then keep them in docker's config."""
    import getpass
    user = args.username or settings.username
    password = (stdin.read().decode('utf-8').rstrip('\r\n') if args.password_stdin
                else settings.password or (getattr(stdin, 'isatty', bool)()
                                           and getpass.getpass('Password: ')))
    if not (user and password):     # never a password on the command line
        raise _UsageError('login needs a user (-u USER or DXF_USERNAME) and a password '
                          '(--password-stdin, DXF_PASSWORD, or a terminal to type it on)')
    settings.username, settings.password, settings.authorization, settings.token = (
        user, password, None, None)
    settings.sent[args.host] = settings.source = 'dxf login'
    with settings.open(None, host=args.host) as base:
        if base.authenticate(user, password):       # a token: now try it
            base.api_version_check()
    _docker_config_store(args.host, settings.environ, user, password)


def _cmd_logout(dxf, args, settings, out, stdin):
    _docker_config_store(args.host, settings.environ)


def _cmd_version(dxf, args, settings, out, stdin):
    _write_line(out, 'dxf.py ' + __version__)


_REPO = ('repo', dict(metavar='REPO', help='repository name'))
_MANIFEST_ARGS = [('--artifact-type', dict(metavar='TYPE', help=(
    'the manifest\'s artifactType (default application/vnd.dxf.alias.v1; '
    'with --config none)'))), ('--annotation', dict(
    action='append', metavar='KEY=VALUE', help='a manifest annotation; repeat '
    'for more')), ('--annotation-file', dict(metavar='FILE', help=(
        'annotations as oras reads them: {"$manifest": {...}, "$config": '
        '{...}, "FILE-NAME": {...}}'))), ('--config', dict(
            metavar='FILE[:MEDIATYPE]', help='FILE as the config blob (default '
            'type application/vnd.unknown.config.v1+json)'))]
_SUBJECT = ('subject', dict(metavar='SUBJECT', help='@ALIAS or a manifest digest'))
_REFS = ('refs', dict(nargs='*', metavar='DIGEST|@ALIAS', help=(
    'blobs by digest, or an alias\'s blobs (no REF: a manifest on stdin)')))
_ALIASES_OR_STDIN = ('aliases', dict(nargs='*', metavar='ALIAS', help=(
    'aliases (no ALIAS: a manifest on stdin)')))
_ALIASES = ('aliases', dict(nargs='+', metavar='ALIAS', help='aliases'))
_HOST = ('host', dict(metavar='HOST', help='the registry, host[:port]'))
# The commands that take --format json (one JSON object per line, _emit).
_JSON_COMMANDS = ('push-blob', 'pull-blob', 'get-alias', 'list-aliases', 'list-repos',
                  'blob-size', 'copy-alias', 'attach', 'referrers', 'resolve')

# (name, function, what it opens: 'repo' (REPO's store; the REPO argument
# comes first), 'registry' or None, help, [(argument, argparse options)])
_COMMANDS = [
    ('auth', _cmd_auth, 'repo', 'print a registry token for REPO',
     [('actions', dict(nargs='*', metavar='ACTION', help='pull, push, delete or *'))]),
    ('push-blob', _cmd_push_blob, 'repo',
     'upload files (- for stdin) and directories (each one gzip tar, as oras '
     'stores them), print their digests; a last @ALIAS names them all',
     [('files', dict(nargs='+', metavar='FILE|DIR', help=(
         'files to upload (- reads stdin), directories to store as one '
         'layer each; a last @ALIAS points that alias at them all')))]
     + _MANIFEST_ARGS),
    ('pull-blob', _cmd_pull_blob, 'repo',
     'write blobs to stdout or a file (no REF: read a manifest from stdin)',
     [_REFS, ('--output', dict(flags=('-o',), metavar='PATH', help=(
         'write to PATH (a directory, or a PATH ending in /: one file '
         'per blob, a directory layer unpacked), which appears only once '
         'every byte is verified')))]),
    ('blob-size', _cmd_blob_size, 'repo', 'print blob sizes (an alias: their sum)', [_REFS]),
    ('mount-blob', _cmd_mount_blob, 'repo', 'mount a blob from another repository',
     [('from_repo', dict(metavar='FROM-REPO', help=(
         'the repository of the same registry that has the blob'))),
      ('digest', dict(metavar='DIGEST', help='the blob\'s digest')),
      ('alias', dict(nargs='?', metavar='@ALIAS', help='also point this alias at the blob'))]),
    ('del-blob', _cmd_del_blob, 'repo', 'delete blobs (an alias\'s blobs, not the alias)',
     [_REFS]),
    ('set-alias', _cmd_set_alias, 'repo',
     'point ALIAS at blobs (a FILE with a path separator is hashed)',
     [('alias', dict(metavar='ALIAS', help='the alias to set (without @)')),
      ('refs', dict(nargs='+', metavar='DIGEST|FILE', help=(
          'blobs in order: digests, or files already pushed (./NAME)')))]
     + _MANIFEST_ARGS),
    ('get-alias', _cmd_get_alias, 'repo', 'print the digests an alias names',
     [_ALIASES_OR_STDIN]),
    ('del-alias', _cmd_del_alias, 'repo', 'delete aliases (their blobs stay), print '
     'the blobs they named', [_ALIASES]),
    ('get-digest', _cmd_get_digest, 'repo', 'print an alias\'s config blob digest '
     '(a dxf alias: its first blob)', [_ALIASES_OR_STDIN]),
    ('get-manifest', _cmd_get_manifest, 'repo', 'print an alias\'s manifest', [_ALIASES]),
    ('list-aliases', _cmd_list_aliases, 'repo', 'print the aliases in REPO', []),
    ('copy-alias', _cmd_copy_alias, 'repo',
     'copy an alias and its blobs to another repository, registry or '
     'OCI layout (DEST: REPO, HOST[:PORT]/REPO or oci:DIRECTORY)',
     [('alias', dict(metavar='ALIAS', help='the alias to copy')),
      ('dest', dict(metavar='DEST', help='REPO, HOST[:PORT]/REPO or oci:DIRECTORY')),
      ('dest_alias', dict(nargs='?', metavar='DEST-ALIAS', help=(
          'the alias\'s name there (default: ALIAS)')))]),
    ('attach', _cmd_attach, 'repo', 'attach files (a signature, an SBOM, a note) to '
     'SUBJECT, print the digest of the manifest that refers to it',
     [_SUBJECT, ('files', dict(nargs='*', metavar='FILE|DIR', help=(
         'files (- reads stdin) and directories, as for push-blob')))]
     + _MANIFEST_ARGS),
    ('referrers', _cmd_referrers, 'repo', 'print "DIGEST ARTIFACT-TYPE" of each '
     'manifest attached to SUBJECT', [_SUBJECT, ('--artifact-type', dict(
         metavar='TYPE', help='only those of this artifact type'))]),
    ('resolve', _cmd_resolve, 'repo', 'print the digest of each alias\'s manifest',
     [_ALIASES]),
    ('list-repos', _cmd_list_repos, 'registry', 'print the repositories in the registry', []),
    ('login', _cmd_login, None, 'check credentials for HOST, keep them in docker\'s config',
     [_HOST, ('--username', dict(flags=('-u',), metavar='USER', help='default: DXF_USERNAME')),
      ('--password-stdin', dict(action='store_true', help=(
          'read the password from stdin (default: DXF_PASSWORD, else asked)')))]),
    ('logout', _cmd_logout, None, 'remove HOST\'s credentials from docker\'s config',
     [_HOST]),
    ('version', _cmd_version, None, 'print the version', []),
]

# The exit statuses, one meaning each (README "Exit status" lists the same).
_EXIT_STATUSES = ((0, 'ok'), (errno.ENOENT, 'not found'), (errno.EIO, 'integrity'),
                  (errno.EACCES, 'auth'), (errno.EINVAL, 'usage'), (1, 'other'),
                  (_EXIT_INTERNAL, 'internal error'), (_EXIT_INTERRUPTED, 'interrupted'),
                  (128 + 15, 'terminated'))     # SIGTERM
_EPILOG = 'environment: %s. Exit status: %s.' % (', '.join(n for n, _ in _ENV_VARS), ', '.join(
    '%d %s' % pair for pair in _EXIT_STATUSES))


def _build_parser(out, only=None):
    """The command line's parser; with ``only``, that command's alone (the
    other 16 subparsers cost a few ms of argparse set-up)."""
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise _UsageError('%s (see %s --help)' % (message, self.prog))

        def exit(self, status=0, message=None):
            if message:
                raise _UsageError(message.strip())
            raise _Exit(status)

        def _print_message(self, message, file=None):
            if message:
                out.write(message.encode('utf-8'))

    parser = Parser(prog='dxf', description='Store data in a Docker / OCI '
                    'registry: blobs by digest, aliases for sets of blobs.',
                    epilog=_EPILOG)
    parser.add_argument('--version', action='version',
                        version='dxf.py ' + __version__)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND')
    sub.required = True
    for name, func, opens, text, arguments in _COMMANDS:
        if only and name != only:
            continue
        p = sub.add_parser(name, help=text, description=text, epilog=_EPILOG, usage=(
            'dxf push-blob [-h] REPO FILE|DIR... [@ALIAS]' if name == 'push-blob' else None))
        for dest, options in [_REPO] * (opens == 'repo') + arguments:
            options = dict(options)
            p.add_argument(*options.pop('flags', ()) + (dest,), **options)
        if name in _JSON_COMMANDS:
            p.add_argument('--format', choices=('text', 'json'), default='text', help=(
                'json: one JSON object per line (digest, size, mediaType, title, ...)'))
        p.set_defaults(func=func, opens=opens)
    return parser


def _parse_args(argv, out):
    """``argv`` parsed by its command's parser (only that one is built)."""
    parser = _build_parser(out, argv[0] if argv and any(
        argv[0] == c[0] for c in _COMMANDS) else None)
    args, extra = parser.parse_known_args(argv)
    # argparse (before 3.7's parse_intermixed_args) leaves positionals
    # that follow an option unparsed: "pull-blob REPO -o F @alias".
    rest = getattr(args, 'refs', getattr(args, 'files', None))
    if extra and rest is not None and not any(a.startswith('-') for a in extra):
        rest += extra
    elif extra:
        parser.error('unrecognized arguments: %s' % ' '.join(extra))
    return args


def main(argv=None, environ=None, stdout=None, stderr=None, stdin=None):
    """Run the command line; return the exit status.

    :param argv: arguments without the program name (default sys.argv[1:])
    :param environ: the DXF_* settings (default os.environ)
    :param stdout: binary stream for data; ``stderr`` text stream for errors;
        ``stdin`` binary stream for manifests and ``push-blob -``
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    stdout = stdout if stdout is not None else sys.stdout.buffer
    stderr = stderr if stderr is not None else sys.stderr
    stdin = stdin if stdin is not None else sys.stdin.buffer
    try:      # as _Settings reads it; a bad value is reported there
        debug = _env_flag(environ, 'DXF_DEBUG')
    except _UsageError:
        debug = False
    dxf = settings = printer = None

    def fail(message, status):
        if printer is not None:     # not at the end of the progress line
            printer.interrupt()
        return _fail(stderr, message, status, debug)
    restore = _catch_signals()
    try:
        args = _parse_args(argv, stdout)
        settings = _Settings.from_environ(environ, stdout, stderr)
        printer = settings.progress_printer
        settings.json = getattr(args, 'format', None) == 'json'
        if args.opens:
            dxf = settings.open(getattr(args, 'repo', None))
        args.func(dxf, args, settings, stdout, stdin)
        stdout.flush()
        return 0
    except _Exit as exc:
        return exc.status
    except BrokenPipeError:
        return 1          # the reader went away (dxf pull-blob ... | head)
    except (Exception, KeyboardInterrupt) as exc:
        return fail(*_failure(exc, settings))
    finally:
        if dxf is not None:
            dxf.close()
        restore()


def _interruption():
    """The error line and exit status for the interrupt received:
    128 + the signal's number, as a shell reports it (130, 143)."""
    signum = getattr(_STOP, 'signum', None) or 2      # SIGINT: Ctrl-C
    return 'interrupted' if signum == 2 else 'terminated (SIGTERM)', 128 + signum


def _catch_signals():
    """Have SIGINT and SIGTERM raise KeyboardInterrupt in the main thread
    (SIGTERM would end dxf without a word or a clean-up) and set _STOP.
    A second one interrupts the clean-up (see _in_parallel).  Returns
    what undoes it."""
    import signal
    if threading.current_thread() is not threading.main_thread():
        return lambda: None     # only the main thread may set handlers

    def interrupt(signum, frame):
        _STOP.signum = signum
        _STOP.set()
        raise KeyboardInterrupt
    saved = [(n, signal.signal(n, interrupt))
             for n in (signal.SIGINT, signal.SIGTERM)]

    def restore():
        for number, handler in saved:
            signal.signal(number, handler)
        _STOP.signum = None
        _STOP.clear()
    return restore


def _failure(exc, settings):
    """The error line and exit status (see _EXIT_STATUSES) for what ended a
    command; ``settings`` None if they were not read yet."""
    if isinstance(exc, _UsageError):
        return str(exc), errno.EINVAL
    if isinstance(exc, DXFUnauthorizedError) and settings:
        return str(exc) + settings.hint(exc), exc.exit_code
    if isinstance(exc, DXFError):
        return str(exc), exc.exit_code
    if isinstance(exc, KeyboardInterrupt):      # 130, or 143 for SIGTERM
        return _interruption()
    if isinstance(exc, OSError):     # a path dxf cannot use: named, EINVAL (as _AtomicFile's)
        return (('%s: %s' % (exc.filename, _exc_text(exc)), errno.EINVAL) if exc.filename
                else (_exc_text(exc), 1))
    # A bug of ours: still one line, no traceback.
    return ('internal error (%s: %s); DXF_DEBUG=1 shows where'
            % (type(exc).__name__, exc), _EXIT_INTERNAL)


def _fail(stderr, message, status, debug):
    if debug:
        import traceback
        stderr.write(traceback.format_exc())
    stderr.write('dxf: error: %s\n' % _printable(message, 1000))
    stderr.flush()
    return status


# =============================================================================
# 16. python-dxf compatibility
#     Every name and module kept for code written for python-dxf, in one
#     place: its error names, auth_by_password, dxf.exceptions, dxf.main.
# =============================================================================

# python-dxf's names for the same concepts.
DXFUnexpectedError = DXFError
DXFUnexpectedStatusCodeError = DXFHTTPError


# python-dxf's errors for things dxf.py does not do (schema 1 manifests and
# their signatures); nothing raises them, but code that catches them runs.
class DXFUnexpectedKeyTypeError(DXFError):
    """python-dxf: a schema 1 signature's key type is not supported."""

    def __init__(self, got, expected):
        super().__init__('expected key type %s, got %s' % (expected, got),
                         got=got, expected=expected)


class DXFDisallowedSignatureAlgorithmError(DXFError):
    """python-dxf: a schema 1 signature algorithm is forbidden."""

    def __init__(self, alg):
        super().__init__('disallowed signature algorithm: %s' % alg, alg=alg)


class DXFSignatureChainNotImplementedError(DXFError):
    """python-dxf: schema 1 signatures with a certificate chain."""

    def __init__(self, message='verification with a cert chain is not '
                 'implemented'):
        super().__init__(message)


class DXFDigestNotAvailableForSchema1(DXFManifestError):
    """python-dxf: a schema 1 manifest has no config blob to take a digest of."""

    def __init__(self, message='Schema 1 manifest has no configuration blob'):
        super().__init__(message)


# python-dxf compatibility: the 2015 README calls authenticate this.
DXFBase.auth_by_password = DXFBase.authenticate


def _manifest_response(dxf, alias, method):
    """A manifest's HTTP response as a requests.Response: status_code, headers, text."""
    resp = dxf._manifest_request(alias, method)
    view = _ErrorResponse(resp.status, resp.reason, resp.url)
    view.headers, view.content = resp.headers, resp.body or b''
    return view


def _get_manifest_and_response(self, alias):
    """python-dxf: ``(manifest, response)``; prefer get_manifest."""
    response = _manifest_response(self, alias, 'GET')
    return response.text, response


def _head_manifest_and_response(self, alias):
    """python-dxf: ``(digest, response)``; prefer get_manifest_digest."""
    response = _manifest_response(self, alias, 'HEAD')
    return response.headers.get('Docker-Content-Digest'), response


DXF.get_manifest_and_response = _get_manifest_and_response
DXF.head_manifest_and_response = _head_manifest_and_response


class PaginatingResponse:
    """python-dxf: the ``header`` items of a paginated list at ``path`` (in
    the repository for '_request'); prefer list_aliases(iterate=True)."""

    def __init__(self, dxf_obj, req_meth, path, header, **kwargs):
        self._items = dxf_obj._paginate(dxf_obj._url(path) if req_meth == '_request' else path,
                                        header, None, kwargs.get('params', {}).get('n'))

    def __iter__(self):
        return self._items


# python-dxf compatibility: python-dxf is a package, and its users import
# dxf.exceptions and dxf.main.  This file provides both as module objects
# registered under its own name, so "import dxf.exceptions" and
# "from dxf.exceptions import DXFUnauthorizedError" work (the import system
# looks in sys.modules before asking whether dxf is a package).  "dxf.main"
# stays our main(); "import dxf.main" then "dxf.main.doit(args, environ)"
# reaches doit through the attribute, "from dxf.main import doit" through
# the module.


def _compat_doit(args, environ):
    """python-dxf's dxf.main.doit: run the command line; return the status.

    It uses sys.stdin and sys.stdout as they are at the call, text-only
    stand-ins (without ``.buffer``) included, as python-dxf's doit does.
    """
    def binary(stream):
        return getattr(stream, 'buffer', None) or _TextAsBinary(stream)
    return main(list(args), environ, stdout=binary(sys.stdout),
                stdin=binary(sys.stdin))


class _TextAsBinary:
    """A text stream with no binary ``buffer``, seen as a binary one."""

    def __init__(self, stream):
        self.stream = stream
        self.pending = None

    def write(self, data):
        self.stream.write(bytes(data).decode('utf-8', 'replace'))
        return len(data)

    def flush(self):
        if hasattr(self.stream, 'flush'):
            self.stream.flush()

    def read(self, n=-1):
        if self.pending is None:     # read the text in full at the first call
            self.pending = io.BytesIO(self.stream.read().encode('utf-8'))
        return self.pending.read(n)


def _compat_main():
    """python-dxf's dxf.main.main: run the command line and exit."""
    sys.exit(main(sys.argv[1:], os.environ))


def _compat_modules():
    import types
    exceptions = types.ModuleType(__name__ + '.exceptions',
                                  'python-dxf compatibility: dxf\'s errors.')
    for name in __all__:
        if name.startswith('DXF'):
            setattr(exceptions, name, globals()[name])
    main_module = types.ModuleType(__name__ + '.main',
                                   'python-dxf compatibility: the command line.')
    main_module.doit = _compat_doit
    main_module.main = _compat_main
    main.doit = _compat_doit
    sys.modules[exceptions.__name__] = exceptions
    sys.modules[main_module.__name__] = main_module
    return exceptions


exceptions = _compat_modules()

# =============================================================================
# 17. Entry point
# =============================================================================

if __name__ == '__main__':
    sys.exit(main())
