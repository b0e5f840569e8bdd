"""The plugin's extents in whole sectors (pure; the qemu-img end is in test_vbmount)."""

from __future__ import annotations

from nbdkit_plugin.sectors import whole_sectors


def test_aligned_runs_are_unchanged() -> None:
    runs = [(0, 4096, True), (4096, 4096, False), (8192, 4096, True)]
    assert whole_sectors(0, runs) == runs


def test_holes_shrink_and_data_grows() -> None:
    runs = [(0, 1000, True), (1000, 100, False), (1100, 3900, True), (5000, 3000, False),
            (8000, 8384, True)]  # fmt: skip
    assert whole_sectors(0, runs) == [
        (0, 512, True),
        (512, 1024, False),
        (1536, 3072, True),
        (4608, 3584, False),
        (8192, 8192, True),
    ]


def test_a_request_from_mid_sector_starts_with_data() -> None:
    assert whole_sectors(100, [(100, 1436, True)]) == [(100, 412, False), (512, 1024, True)]
    assert whole_sectors(100, [(100, 412, False), (512, 1024, True)]) == [
        (100, 412, False),
        (512, 1024, True),
    ]


def test_only_part_sector_holes_become_data() -> None:
    assert whole_sectors(1000, [(1000, 10, True)]) == [(1000, 10, False)]
    assert whole_sectors(0, [(0, 300, False), (300, 100, True), (400, 112, False)]) == [
        (0, 512, False)
    ]


def test_a_trailing_part_sector_hole_is_left_for_the_next_request() -> None:
    runs = [(0, 512, False), (512, 700, True)]  # ends at 1212, mid-sector
    assert whole_sectors(0, runs) == [(0, 512, False), (512, 512, True)]
