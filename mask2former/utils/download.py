"""Checkpoints given by URL (``MODEL.WEIGHTS https://...``): downloaded once into a local cache.

Detectron2 resolves every path through its ``PathManager``; :func:`register_url_handler` (called
by ``import mask2former``) replaces the handler of ``http://`` and ``https://`` with
:class:`CachedURLHandler`, so the Trainer, ``DefaultPredictor`` and the checkpointers all accept a
URL. Compared with iopath's own handler, the download

* shows a progress bar and resumes an interrupted transfer (HTTP ``Range``) instead of starting
  over (published checkpoints are 200 MB to 1 GB);
* writes to ``<file>.part`` and renames only a complete file (its size checked against the
  server's ``Content-Length``), so an interrupted download is never taken for a checkpoint;
* fails with one line naming the URL, the reason and what to do, instead of a traceback from
  urllib.

The cache is ``$MASK2FORMER_CACHE`` if set, else ``$XDG_CACHE_HOME/mask2former`` (default
``~/.cache/mask2former``); a URL's file is ``<cache>/<host>/<path of the URL>``.
"""
import fcntl
import logging
import os
import urllib.error
import urllib.parse
import urllib.request

from iopath.common.file_io import PathHandler

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A URL could not be fetched; the message says which and what to do."""


def cache_dir():
    if os.environ.get("MASK2FORMER_CACHE"):
        return os.path.expanduser(os.environ["MASK2FORMER_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mask2former")


def cached_file_name(url, root=None):
    """Where the download of `url` is kept: readable, and distinct for distinct hosts and paths."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"Not an http(s) URL: {url}")
    segments = [s for s in urllib.parse.unquote(parts.path).split("/") if s not in ("", ".", "..")]
    if not segments:
        raise ValueError(f"URL {url} names no file")
    host = parts.netloc.replace(":", "_")
    return os.path.join(root or cache_dir(), host, *segments)


def download(url, root=None, timeout=60, progress=True):
    """
    Returns the local path of `url`, downloading it first unless it is already in the cache.

    An interrupted download leaves ``<file>.part``; the next call asks the server for the rest
    (falling back to a full download when the server ignores ``Range``).
    """
    target = cached_file_name(url, root)
    if os.path.isfile(target):
        return target
    os.makedirs(os.path.dirname(target), exist_ok=True)
    # Several training processes may ask for the same file at once: one downloads, the others wait.
    with open(target + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.isfile(target):
            _fetch(url, target, timeout, progress)
    return target


def _fetch(url, target, timeout, progress):
    import tqdm

    partial = target + ".part"
    have = os.path.getsize(partial) if os.path.isfile(partial) else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:
            # The server says our partial file already reaches (or passes) the end: trust nothing
            # and start over next time.
            os.remove(partial)
        raise DownloadError(_failure(url, f"the server answered HTTP {e.code} {e.reason}", partial)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(_failure(url, f"cannot reach the server ({reason})", partial)) from None

    with response:
        if have and response.status != 206:
            logger.info("%s: the server does not resume downloads; starting over", url)
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        logger.info("Downloading %s to %s", url, target)
        bar = tqdm.tqdm(
            total=total, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
            desc=os.path.basename(target), disable=not progress,
        )
        try:
            with open(partial, "ab" if have else "wb") as f, bar:
                while True:
                    chunk = response.read(_CHUNK)
                    if not chunk:
                        break
                    f.write(chunk)
                    bar.update(len(chunk))
        except (OSError, urllib.error.URLError) as e:
            raise DownloadError(_failure(url, f"the transfer broke off ({e})", partial)) from None
    size = os.path.getsize(partial)
    if total is not None and size != total:
        raise DownloadError(_failure(url, f"received {size} of {total} bytes", partial))
    os.replace(partial, target)
    return target


def _failure(url, reason, partial):
    kept = (
        f" The partial file {partial} is kept and the download resumes from it next time."
        if os.path.isfile(partial) and os.path.getsize(partial) > 0
        else ""
    )
    return (
        f"Could not download {url}: {reason}.{kept} Check the network connection, or download the "
        f"file by other means and give its local path instead (e.g. MODEL.WEIGHTS /path/to/file)."
    )


class CachedURLHandler(PathHandler):
    """iopath handler for http(s) URLs that reads them through :func:`download`."""

    def _get_supported_prefixes(self):
        return ["http://", "https://"]

    def _get_local_path(self, path, force=False, **kwargs):
        self._check_kwargs(kwargs)
        if force:
            local = cached_file_name(path)
            if os.path.isfile(local):
                os.remove(local)
        return download(path)

    def _open(self, path, mode="r", buffering=-1, **kwargs):
        self._check_kwargs(kwargs)
        if any(m in mode for m in "wax+"):
            raise ValueError(f"{path}: URLs can only be opened for reading, not with mode {mode!r}")
        return open(download(path), mode, buffering=buffering)


def register_url_handler():
    from detectron2.utils.file_io import PathManager

    PathManager.register_handler(CachedURLHandler(), allow_override=True)
