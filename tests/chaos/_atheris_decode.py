"""Coverage-guided fuzzing of codec.decode with atheris (libFuzzer). T6, where it installs.

    python _atheris_decode.py -runs=N [libFuzzer flags]

The input bytes are split into frames at a separator; the corpus of valid messages is
the seed. Anything other than a return or ProtocolError is a crash (exit code != 0).
"""

from __future__ import annotations

import os
import sys
import tempfile

import atheris

with atheris.instrument_imports():
    import _fuzz_target

    import tensorwire.codec  # noqa: F401

SEP = b"\xc1FRAME\xc1"  # 0xc1 is never used by msgpack: rarely inside a header


def one_input(data: bytes) -> None:
    _fuzz_target.check(data.split(SEP)[:20])


def main() -> None:
    # The caller passes a directory it removes (Fuzz() exits this process).
    seeds = os.environ.get("CHAOS_SEED_DIR") or tempfile.mkdtemp(prefix="twchaos-atheris-")
    for k, message in enumerate(_fuzz_target.corpus()):
        with open(os.path.join(seeds, f"seed{k}"), "wb") as f:
            f.write(SEP.join(message))
    atheris.Setup([*sys.argv, seeds], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
