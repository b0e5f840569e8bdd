"""The nbdkit plugin over synthetic chains, through real nbdkit and libnbd."""

from __future__ import annotations

import hashlib
import json
import shlex
import subprocess
from pathlib import Path

import nbd
import pytest

from tests.chain.chains import Model, write_chain
from tests.plugin.nbdkit_run import connect, plugin_argv, run_captive

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SIZE = 16 * MiB
STEPS = [
    [(0, b"\x11" * MiB), (MiB, 3 * MiB), (4 * MiB, b"\x22" * 64 * 1024), (12 * MiB, 4 * MiB)],
    [(MiB, b"\x33" * 8192), (4 * MiB, 64 * 1024)],
    [(8 * MiB, b"\x44" * 2 * MiB), (0, 4096)],
]


@pytest.fixture(params=[False, True], ids=["plain", "lz4"])
def chain(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, list[str], list[Path]]:
    names = write_chain(tmp_path / "set", SIZE, STEPS, compressed=request.param, piece=MiB // 2)
    model = Model(SIZE)
    images = []
    for k, frames in enumerate(STEPS):
        model.apply(frames)
        image = tmp_path / f"expected.{k}.raw"
        image.write_bytes(model.data)
        images.append(image)
    return tmp_path / "set", names, images


def test_every_checkpoint_compares_equal(chain: tuple[Path, list[str], list[Path]]) -> None:
    directory, names, images = chain
    for name, image in zip(names, images, strict=True):
        done = run_captive(
            {"dir": str(directory), "until": name},
            f'qemu-img compare -f raw -F raw {shlex.quote(str(image))} "$uri"',
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Images are identical" in done.stdout


def test_reads_and_properties(chain: tuple[Path, list[str], list[Path]]) -> None:
    directory, _, images = chain
    with connect({"dir": str(directory)}) as h:
        assert h.get_size() == SIZE
        assert h.is_read_only()
        assert h.can_multi_conn()
        assert h.pread(SIZE, 0) == images[-1].read_bytes()
        assert h.pread(5, MiB - 2) == b"\x11\x11\x33\x33\x33"
        h.set_strict_mode(0)  # let the write reach the server
        with pytest.raises(nbd.Error) as refused:
            h.pwrite(b"x", 0)
        assert refused.value.errno == "EPERM"


def test_cow_filter_gives_a_writable_view(chain: tuple[Path, list[str], list[Path]]) -> None:
    directory, _, images = chain
    with connect({"dir": str(directory)}, filters=["cow"]) as h:
        h.pwrite(b"hello", 100000)
        assert h.pread(10, 99998) == b"\x11\x11hello\x11\x11\x11"
    with connect({"dir": str(directory)}) as h:  # the backup is untouched
        assert h.pread(10, 99998) == b"\x11" * 10


def test_map_shows_holes(chain: tuple[Path, list[str], list[Path]]) -> None:
    directory, names, _ = chain
    done = run_captive({"dir": str(directory), "until": names[1]}, 'nbdinfo --map --json "$uri"')
    assert done.returncode == 0, done.stderr
    runs = [(e["offset"], e["length"], e["type"]) for e in json.loads(done.stdout)]
    # step 1 rewrote 8 KiB after the first MiB and zeroed the 64 KiB written at 4 MiB
    assert runs == [(0, MiB + 8192, 0), (MiB + 8192, SIZE - MiB - 8192, 3)]


def test_works_without_the_callers_environment(
    chain: tuple[Path, list[str], list[Path]],
) -> None:
    """nbdkit's embedded /usr/bin/python3 finds the package from the plugin's path alone."""
    directory, _, images = chain
    done = subprocess.run(
        ["nbdkit", "-U", "-", *plugin_argv({"dir": str(directory)}),
         "--run", 'nbdcopy "$uri" /dev/stdout | sha256sum'],
        capture_output=True, text=True, timeout=120, check=False, cwd="/",
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == hashlib.sha256(images[-1].read_bytes()).hexdigest()


def test_explicit_file_sequence(chain: tuple[Path, list[str], list[Path]]) -> None:
    directory, names, images = chain
    files = f"vda.full.data,vda.inc.{names[1]}.data"
    with connect({"dir": str(directory), "file": files}) as h:
        assert h.pread(SIZE, 0) == images[1].read_bytes()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"dir": "/nonexistent/x"}, "backup directory does not exist: /nonexistent/x"),
        ({"dir": "{set}", "disk": "sdq"}, "unknown disk 'sdq' in {set} (disks: vda)"),
        (
            {"dir": "{set}", "until": "nope"},
            "unknown checkpoint 'nope' for disk vda (chain: virtnbdbackup.0, "
            "virtnbdbackup.1, virtnbdbackup.2)",
        ),
        ({"until": "x"}, "missing parameter dir=BACKUP_DIRECTORY"),
        ({"dir": "{set}", "colour": "red"}, "unknown parameter 'colour'"),
    ],
)
def test_bad_parameters_give_one_clear_line(
    chain: tuple[Path, list[str], list[Path]], params: dict[str, str], message: str
) -> None:
    directory = str(chain[0])
    params = {k: v.replace("{set}", directory) for k, v in params.items()}
    done = subprocess.run(
        ["nbdkit", "-s", "--exit-with-parent", *plugin_argv(params)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert message.replace("{set}", directory) in done.stderr
    assert "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_qemu_img_convert_keeps_unaligned_data(tmp_path: Path) -> None:
    """qemu works in 512-byte sectors: a few bytes of data mid-sector must not read as a hole."""
    steps = [[(1000, b"\x55" * 100), (5000, b"\x66" * 3000), (70001, b"\x77")]]
    write_chain(tmp_path / "set", MiB, steps)
    model = Model(MiB)
    model.apply(steps[0])
    image = tmp_path / "out.raw"
    done = run_captive(
        {"dir": str(tmp_path / "set")},
        f'qemu-img convert -f raw -O raw "$uri" {shlex.quote(str(image))}',
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert image.read_bytes() == bytes(model.data)
    with connect({"dir": str(tmp_path / "set")}) as h:  # unaligned requests stay allowed
        assert h.pread(4, 998) == b"\0\0\x55\x55"
    done = run_captive({"dir": str(tmp_path / "set")}, 'nbdinfo --map --json "$uri"')
    runs = [(e["offset"], e["length"], e["type"]) for e in json.loads(done.stdout)]
    # holes shrink to whole sectors; the data grows over the sectors it touches
    assert runs == [(0, 512, 3), (512, 1024, 0), (1536, 3072, 3), (4608, 3584, 0),
                    (8192, 61440, 3), (69632, 512, 0), (70144, MiB - 70144, 3)]  # fmt: skip


def test_damaged_piece_is_eio_and_the_rest_is_served(tmp_path: Path) -> None:
    """Only the checksum piece holding a flipped byte is refused; its neighbours read fine."""
    names = write_chain(tmp_path / "set", SIZE, STEPS)  # uncompressed, with .sums
    full = tmp_path / "set" / "vda.full.data"
    data = bytearray(full.read_bytes())
    frame_pos = data.index(b"\x11" * 64)  # the payload of the first data frame: disk offset 0
    data[frame_pos + 40000] ^= 0x01  # disk offset 40000: piece [32768, +16384)
    full.write_bytes(bytes(data))
    with connect({"dir": str(tmp_path / "set"), "until": names[0]}) as h:
        with pytest.raises(nbd.Error) as refused:
            h.pread(4096, 36864)
        assert refused.value.errno == "EIO"
        assert h.pread(32768, 0) == b"\x11" * 32768
        assert h.pread(16384, 49152) == b"\x11" * 16384


def test_set_without_sums_is_served_with_one_warning(tmp_path: Path) -> None:
    write_chain(tmp_path / "set", SIZE, STEPS, sums=False)
    done = run_captive({"dir": str(tmp_path / "set")}, 'nbdinfo --size "$uri"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(SIZE)
    warnings = [line for line in done.stderr.splitlines() if "no checksum file" in line]
    assert warnings == [
        "vbmount: warning: vda.full.data, vda.inc.virtnbdbackup.1.data, "
        "vda.inc.virtnbdbackup.2.data have no checksum file: the data cannot be checked as it "
        "is read (`vbbackup verify --add-sums DIR` adds them)"
    ]
