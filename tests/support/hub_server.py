"""A Hugging Face Hub-compatible server on 127.0.0.1 for the tests (stdlib only, in memory).

It speaks the part of the Hub's HTTP API that huggingface_hub, datasets and timm use to create repos
and branches, upload (regular files in the commit, large files through the LFS batch API), commit
(one NDJSON request per commit, 412 when the parent commit is not the head), list, and download
(HEAD/GET resolve with the Hub's headers and Range). Repos keep every commit, so a test can ask what
the head was before and after. ``fail_next`` makes the next matching request answer with an error, to
check what clients leave behind when the server fails half-way.
"""
import base64
import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Dict, List, Optional, Tuple
from urllib.parse import parse_qs, unquote, urlsplit

GITATTRIBUTES = b'*.safetensors filter=lfs diff=lfs merge=lfs -text\n*.parquet filter=lfs diff=lfs merge=lfs -text\n'
LFS_SUFFIXES = ('.safetensors', '.bin', '.pt', '.pth', '.ckpt', '.parquet', '.arrow', '.png', '.jpg', '.jpeg')


def git_blob_oid(data: bytes) -> str:
    """The git blob id of a file's bytes, as the Hub reports it for regular files."""
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()


@dataclass
class Entry:
    size: int
    blob_oid: str  # git oid of the file, or of its LFS pointer
    lfs_oid: Optional[str] = None  # sha256 of the content, for LFS files
    data: Optional[bytes] = None  # content of regular files


@dataclass
class Commit:
    oid: str
    parent: Optional[str]
    title: str
    files: Dict[str, Entry]
    date: str = field(default_factory=lambda: time.strftime('%Y-%m-%dT%H:%M:%S.000Z', time.gmtime()))


@dataclass
class Repo:
    repo_type: str
    repo_id: str
    private: bool
    commits: Dict[str, Commit] = field(default_factory=dict)
    branches: Dict[str, str] = field(default_factory=dict)

    def history(self, branch: str = 'main') -> List[Commit]:
        """The commits of a branch, newest first."""
        out, oid = [], self.branches.get(branch)
        while oid:
            out.append(self.commits[oid])
            oid = self.commits[oid].parent
        return out


class HubError(Exception):
    def __init__(self, status: int, message: str, code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.code = status, message, code


class LoopbackHub:
    """The server's state and its thread; ``url`` is what HF_ENDPOINT must be set to."""

    def __init__(self, user: str = 'tester'):
        self.user = user
        self.repos: Dict[Tuple[str, str], Repo] = {}
        self.lfs: Dict[str, bytes] = {}
        self.requests: List[Tuple[str, str, Optional[str]]] = []  # method, path, Authorization header
        self._failures: List[Tuple[str, str, int]] = []
        self.etags: Dict[Tuple[str, str], str] = {}  # (repo id, path) -> the ETag served for it, as a hostile Hub may
        self._lock = threading.RLock()
        self._counter = 0
        self.httpd = ThreadingHTTPServer(('127.0.0.1', 0), _handler_for(self))
        self.httpd.daemon_threads = True
        self.url = f'http://127.0.0.1:{self.httpd.server_address[1]}'
        self._thread: Optional[threading.Thread] = None

    def start(self) -> 'LoopbackHub':
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def fail_next(self, method: str, path_pattern: str, status: Optional[int] = 500) -> None:
        """Answer the next request whose method matches and path matches the regex with ``status``; with
        None, close the connection without answering (a network failure)."""
        with self._lock:
            self._failures.append((method, path_pattern, status))

    def repo(self, repo_id: str, repo_type: str = 'model') -> Repo:
        return self.repos[(repo_type, repo_id)]

    def file(self, repo_id: str, path: str, repo_type: str = 'model', revision: str = 'main') -> bytes:
        """A file's bytes at a revision."""
        repo = self.repo(repo_id, repo_type)
        entry = repo.commits[repo.branches.get(revision, revision)].files[path]
        return entry.data if entry.lfs_oid is None else self.lfs[entry.lfs_oid]

    def put_commit(self, repo_id: str, files: Dict[str, bytes], repo_type: str = 'model', private: bool = False,
                   title: str = 'test commit', branch: str = 'main') -> str:
        """Commit files directly (creating the repo if needed), as another client would have."""
        with self._lock:
            key = (repo_type, repo_id)
            if key not in self.repos:
                self._create(repo_type, repo_id, private)
            repo = self.repos[key]
            entries = dict(repo.commits[repo.branches[branch]].files)
            for path, data in files.items():
                entries[path] = self._entry(path, data)
            return self._commit(repo, branch, title, entries)

    # --- state changes (under the lock) -------------------------------------------------------------

    def _new_oid(self, seed: str) -> str:
        self._counter += 1
        return hashlib.sha1(f'{seed}:{self._counter}:{time.time()}'.encode()).hexdigest()

    def _entry(self, path: str, data: bytes) -> Entry:
        if path.endswith(LFS_SUFFIXES):
            oid = hashlib.sha256(data).hexdigest()
            self.lfs[oid] = data
            pointer = f'version https://git-lfs.github.com/spec/v1\noid sha256:{oid}\nsize {len(data)}\n'.encode()
            return Entry(len(data), git_blob_oid(pointer), lfs_oid=oid)
        return Entry(len(data), git_blob_oid(data), data=data)

    def _create(self, repo_type: str, repo_id: str, private: bool) -> Repo:
        repo = Repo(repo_type, repo_id, private)
        self.repos[(repo_type, repo_id)] = repo
        self._commit(repo, 'main', 'initial commit', {'.gitattributes': self._entry('.gitattributes', GITATTRIBUTES)})
        return repo

    def _commit(self, repo: Repo, branch: str, title: str, files: Dict[str, Entry]) -> str:
        oid = self._new_oid(repo.repo_id)
        repo.commits[oid] = Commit(oid, repo.branches.get(branch), title, files)
        repo.branches[branch] = oid
        return oid


def _handler_for(hub: LoopbackHub):
    class Handler(_Handler):
        pass
    Handler.hub = hub
    return Handler


_TYPES = {'models': 'model', 'datasets': 'dataset', 'spaces': 'space'}
_REPO = r'(?P<repo>[^/]+/[^/]+?)'


class _Handler(BaseHTTPRequestHandler):
    protocol_version = 'HTTP/1.1'
    hub: LoopbackHub

    def log_message(self, format, *args):  # noqa: A002 - quiet: pytest shows failures, not access logs
        pass

    # --- plumbing -----------------------------------------------------------------------------------

    def _body(self) -> bytes:
        if self.headers.get('Transfer-Encoding', '').lower() == 'chunked':
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b';')[0].strip() or b'0', 16)
                if size == 0:
                    while self.rfile.readline() not in (b'\r\n', b'\n', b''):
                        pass
                    return b''.join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get('Content-Length') or 0))

    def _send(self, status: int, body: bytes = b'', headers: Optional[Dict[str, str]] = None,
              content_type: str = 'application/json', head: bool = False) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _json(self, status: int, payload, headers: Optional[Dict[str, str]] = None) -> None:
        self._send(status, json.dumps(payload).encode(), headers)

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        path, query = url.path, parse_qs(url.query)
        self.hub.requests.append((method, path, self.headers.get('Authorization')))
        body = self._body() if method in ('POST', 'PUT') else b''
        with self.hub._lock:
            for i, (m, pattern, status) in enumerate(self.hub._failures):
                if m == method and re.search(pattern, path):
                    del self.hub._failures[i]
                    if status is None:
                        self.close_connection = True
                        return
                    self._json(status, {'error': 'injected failure'}, {'X-Error-Message': 'injected failure'})
                    return
        try:
            for route_method, pattern, handler in _ROUTES:
                match = re.fullmatch(pattern, path)
                if route_method == method and match:
                    groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    return handler(self, query=query, body=body, head=False, **groups)
                if method == 'HEAD' and route_method == 'GET' and match and handler is _Handler._resolve:
                    groups = {k: unquote(v) if v is not None else None for k, v in match.groupdict().items()}
                    return handler(self, query=query, body=body, head=True, **groups)
            raise HubError(404, f'no route for {method} {path}')
        except HubError as e:
            headers = {'X-Error-Message': e.message}
            if e.code:
                headers['X-Error-Code'] = e.code
            payload = json.dumps({'error': e.message}).encode()
            self._send(e.status, payload, headers, head=method == 'HEAD')

    def do_GET(self):  # noqa: N802
        self._dispatch('GET')

    def do_HEAD(self):  # noqa: N802
        self._dispatch('HEAD')

    def do_POST(self):  # noqa: N802
        self._dispatch('POST')

    def do_PUT(self):  # noqa: N802
        self._dispatch('PUT')

    # --- lookups ------------------------------------------------------------------------------------

    def _repo(self, kind: str, repo_id: str) -> Repo:
        repo = self.hub.repos.get((_TYPES.get(kind, kind), repo_id))
        if repo is None or (repo.private and not self.headers.get('Authorization')):
            raise HubError(404 if repo is None else 401, f'Repository {repo_id} not found', 'RepoNotFound')
        return repo

    @staticmethod
    def _commit_of(repo: Repo, revision: str) -> Commit:
        oid = repo.branches.get(revision, revision)
        if oid not in repo.commits:
            raise HubError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
        return repo.commits[oid]

    def _entries(self, commit: Commit, prefix: str, recursive: bool, expand: bool) -> List[dict]:
        """Files and folders under prefix, the way the tree and paths-info APIs list them."""
        prefix = prefix.strip('/')
        out, folders = [], set()
        for path in sorted(commit.files):
            if prefix and not path.startswith(prefix + '/'):
                continue
            rest = path[len(prefix) + 1:] if prefix else path
            parts = rest.split('/')
            for depth in range(1, len(parts)):
                folder = '/'.join(([prefix] if prefix else []) + parts[:depth])
                if folder not in folders and (recursive or depth == 1):
                    folders.add(folder)
                    out.append({'type': 'directory', 'oid': git_blob_oid(folder.encode()), 'size': 0, 'path': folder})
            if recursive or len(parts) == 1:
                out.append(self._file_entry(commit, path, expand))
        return out

    @staticmethod
    def _file_entry(commit: Commit, path: str, expand: bool) -> dict:
        entry = commit.files[path]
        item = {'type': 'file', 'oid': entry.blob_oid, 'size': entry.size, 'path': path}
        if entry.lfs_oid:
            item['lfs'] = {'oid': entry.lfs_oid, 'size': entry.size, 'pointerSize': 134}
        if expand:
            item['lastCommit'] = {'id': commit.oid, 'title': commit.title, 'date': commit.date}
        return item

    # --- routes -------------------------------------------------------------------------------------

    def _whoami(self, **_):
        if not self.headers.get('Authorization'):
            raise HubError(401, 'Invalid credentials in Authorization header')
        self._json(200, {'type': 'user', 'name': self.hub.user, 'fullname': self.hub.user, 'orgs': [],
                         'auth': {'type': 'access_token', 'accessToken': {'displayName': 'test', 'role': 'write'}}})

    def _create_repo(self, body: bytes, **_):
        payload = json.loads(body)
        repo_type = payload.get('type') or 'model'
        repo_id = f"{payload.get('organization') or self.hub.user}/{payload['name']}"
        prefix = '' if repo_type == 'model' else f'{repo_type}s/'
        url = f'{self.hub.url}/{prefix}{repo_id}'
        with self.hub._lock:
            if (repo_type, repo_id) in self.hub.repos:
                return self._json(409, {'error': 'You already created this repo', 'url': url})
            private = payload.get('private') or payload.get('visibility') == 'private'
            self.hub._create(repo_type, repo_id, bool(private))
        self._json(200, {'url': url, 'name': repo_id, 'id': repo_id})

    def _validate_yaml(self, **_):
        self._json(200, {'errors': [], 'warnings': []})

    def _info(self, kind: str, repo: str, revision: Optional[str] = None, **_):
        found = self._repo(kind, repo)
        commit = self._commit_of(found, revision or 'main')
        self._json(200, {
            'id': found.repo_id, 'modelId': found.repo_id, 'sha': commit.oid, 'private': found.private,
            'disabled': False, 'gated': False, 'downloads': 0, 'likes': 0, 'tags': [],
            'lastModified': commit.date, 'createdAt': found.history()[-1].date,
            'siblings': [{'rfilename': p} for p in sorted(commit.files)],
        })

    def _refs(self, kind: str, repo: str, **_):
        found = self._repo(kind, repo)
        self._json(200, {'branches': [{'name': b, 'ref': f'refs/heads/{b}', 'targetCommit': oid}
                                      for b, oid in found.branches.items()], 'tags': [], 'converts': []})

    def _tree(self, kind: str, repo: str, revision: str, path: Optional[str] = None, query=None, **_):
        commit = self._commit_of(self._repo(kind, repo), revision)
        path = (path or '').strip('/')
        if path and path not in commit.files and not any(p.startswith(path + '/') for p in commit.files):
            raise HubError(404, f'{path} does not exist on {revision}', 'EntryNotFound')
        flag = lambda name: (query.get(name) or ['false'])[0].lower() in ('1', 'true')  # noqa: E731
        self._json(200, self._entries(commit, path, flag('recursive'), flag('expand')))

    def _paths_info(self, kind: str, repo: str, revision: str, body: bytes, **_):
        commit = self._commit_of(self._repo(kind, repo), revision)
        if self.headers.get('Content-Type', '').startswith('application/json'):
            payload = json.loads(body)
            paths, expand = payload.get('paths', []), bool(payload.get('expand'))
        else:
            form = parse_qs(body.decode())
            paths, expand = form.get('paths', []), (form.get('expand') or ['false'])[0] in ('true', 'True', '1')
        out = []
        for path in paths:
            path = path.strip('/')
            if path in commit.files:
                out.append(self._file_entry(commit, path, expand))
            elif any(p.startswith(path + '/') for p in commit.files):
                out.append({'type': 'directory', 'oid': git_blob_oid(path.encode()), 'size': 0, 'path': path})
        self._json(200, out)

    def _preupload(self, kind: str, repo: str, revision: str, body: bytes, **_):
        found = self._repo(kind, repo)
        commit = self._commit_of(found, revision) if revision in found.branches or revision in found.commits else None
        files = []
        for f in json.loads(body)['files']:
            mode = 'lfs' if f['path'].endswith(LFS_SUFFIXES) or f['size'] > 10_000_000 else 'regular'
            current = commit.files.get(f['path']) if commit else None
            files.append({'path': f['path'], 'uploadMode': mode, 'shouldIgnore': False,
                          'oid': current.blob_oid if current and mode == 'regular' else None})
        self._json(200, {'files': files, 'commitOid': commit.oid if commit else None})

    def _lfs_batch(self, prefix: Optional[str], repo: str, body: bytes, **_):
        self._repo('datasets' if prefix else 'models', repo)
        payload = json.loads(body)
        objects = []
        for obj in payload['objects']:
            item = {'oid': obj['oid'], 'size': obj['size'], 'authenticated': True}
            if obj['oid'] not in self.hub.lfs:
                item['actions'] = {'upload': {'href': f"{self.hub.url}/lfs-upload/{obj['oid']}"},
                                   'verify': {'href': f'{self.hub.url}/lfs-verify'}}
            objects.append(item)
        self._send(200, json.dumps({'transfer': 'basic', 'objects': objects}).encode(),
                   content_type='application/vnd.git-lfs+json')

    def _lfs_upload(self, oid: str, body: bytes, **_):
        if hashlib.sha256(body).hexdigest() != oid:
            raise HubError(400, f'LFS object {oid} does not match its content')
        with self.hub._lock:
            self.hub.lfs[oid] = body
        self._send(200)

    def _lfs_verify(self, body: bytes, **_):
        payload = json.loads(body)
        if len(self.hub.lfs.get(payload['oid'], b'')) != payload['size']:
            raise HubError(404, f"LFS object {payload['oid']} was not uploaded")
        self._json(200, {})

    def _create_branch(self, kind: str, repo: str, branch: str, body: bytes, **_):
        found = self._repo(kind, repo)
        with self.hub._lock:
            if branch in found.branches:
                raise HubError(409, f'Branch {branch} already exists')
            start = (json.loads(body or b'{}').get('startingPoint')) or 'main'
            found.branches[branch] = self._commit_of(found, start).oid
        self._json(200, {})

    def _commit(self, kind: str, repo: str, revision: str, body: bytes, **_):
        found = self._repo(kind, repo)
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = next(line['value'] for line in lines if line['key'] == 'header')
        with self.hub._lock:
            if revision not in found.branches:
                raise HubError(404, f'Invalid rev id: {revision}', 'RevisionNotFound')
            head = found.branches[revision]
            if header.get('parentCommit') and header['parentCommit'] != head:
                raise HubError(412, 'A commit has happened since. Please refresh and try again.')
            files = dict(found.commits[head].files)
            for line in lines:
                key, value = line['key'], line['value']
                if key == 'file':
                    files[value['path']] = self.hub._entry(value['path'], base64.b64decode(value['content']))
                elif key == 'lfsFile':
                    if value['oid'] not in self.hub.lfs:
                        raise HubError(422, f"LFS object of {value['path']} was never uploaded")
                    pointer = (f"version https://git-lfs.github.com/spec/v1\noid sha256:{value['oid']}\n"
                               f"size {value['size']}\n")
                    files[value['path']] = Entry(value['size'], git_blob_oid(pointer.encode()), lfs_oid=value['oid'])
                elif key == 'deletedFile':
                    if value['path'] not in files:
                        raise HubError(404, f"A file with this name doesn't exist: {value['path']}", 'EntryNotFound')
                    del files[value['path']]
                elif key == 'deletedFolder':
                    for path in [p for p in files if p.startswith(value['path'].rstrip('/') + '/')]:
                        del files[path]
                elif key != 'header':
                    raise HubError(400, f'unsupported commit operation {key}')
            oid = self.hub._commit(found, revision, header.get('summary', ''), files)
        prefix = '' if found.repo_type == 'model' else f'{found.repo_type}s/'
        self._json(200, {'commitUrl': f'{self.hub.url}/{prefix}{found.repo_id}/commit/{oid}', 'commitOid': oid,
                         'success': True})

    def _resolve(self, prefix: Optional[str], repo: str, revision: str, path: str, head: bool = False, **_):
        found = self._repo('datasets' if prefix else 'models', repo)
        commit = self._commit_of(found, revision)
        if path not in commit.files:
            raise HubError(404, f'{path} does not exist on {revision}', 'EntryNotFound')
        entry = commit.files[path]
        data = entry.data if entry.lfs_oid is None else self.hub.lfs[entry.lfs_oid]
        etag = self.hub.etags.get((found.repo_id, path), entry.lfs_oid or entry.blob_oid)
        headers = {'X-Repo-Commit': commit.oid, 'ETag': f'"{etag}"', 'Accept-Ranges': 'bytes'}
        if entry.lfs_oid:
            headers.update({'X-Linked-Etag': f'"{entry.lfs_oid}"', 'X-Linked-Size': str(entry.size)})
        status, ranged = 200, self.headers.get('Range')
        if ranged and ranged.startswith('bytes='):
            start, _, end = ranged[len('bytes='):].partition('-')
            first = int(start) if start else max(len(data) - int(end), 0)
            last = min(int(end), len(data) - 1) if end and start else len(data) - 1
            headers['Content-Range'] = f'bytes {first}-{last}/{len(data)}'
            data, status = data[first:last + 1], 206
        self._send(status, data, headers, content_type='application/octet-stream', head=head)


_K = r'(?P<kind>models|datasets|spaces)'
_ROUTES = [
    ('GET', r'/api/whoami-v2', _Handler._whoami),
    ('POST', r'/api/repos/create', _Handler._create_repo),
    ('POST', r'/api/validate-yaml', _Handler._validate_yaml),
    ('GET', rf'/api/{_K}/{_REPO}/refs', _Handler._refs),
    ('GET', rf'/api/{_K}/{_REPO}/tree/(?P<revision>[^/]+)(?:/(?P<path>.*))?', _Handler._tree),
    ('POST', rf'/api/{_K}/{_REPO}/paths-info/(?P<revision>[^/]+)', _Handler._paths_info),
    ('POST', rf'/api/{_K}/{_REPO}/preupload/(?P<revision>[^/]+)', _Handler._preupload),
    ('POST', rf'/api/{_K}/{_REPO}/commit/(?P<revision>[^/]+)', _Handler._commit),
    ('POST', rf'/api/{_K}/{_REPO}/branch/(?P<branch>[^/]+)', _Handler._create_branch),
    ('GET', rf'/api/{_K}/{_REPO}(?:/revision/(?P<revision>.+))?', _Handler._info),
    ('POST', rf'/(?P<prefix>datasets/)?{_REPO}\.git/info/lfs/objects/batch', _Handler._lfs_batch),
    ('PUT', r'/lfs-upload/(?P<oid>[0-9a-f]{64})', _Handler._lfs_upload),
    ('POST', r'/lfs-verify', _Handler._lfs_verify),
    ('GET', rf'/(?P<prefix>datasets/)?{_REPO}/resolve/(?P<revision>[^/]+)/(?P<path>.+)', _Handler._resolve),
]
