"""Phone-alignment readers on tiny hand-written files, and frame labelling."""

import pytest

from vqkit.datasets.alignments import (
    Segment,
    frame_labels,
    read_festival_segs,
    read_segments,
    read_textgrid,
    read_timit_phn,
    write_segments,
)

LONG_TEXTGRID = '''File type = "ooTextFile"
Object class = "TextGrid"

xmin = 0
xmax = 1.5
tiers? <exists>
size = 2
item []:
    item [1]:
        class = "IntervalTier"
        name = "words"
        xmin = 0
        xmax = 1.5
        intervals: size = 2
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = ""
        intervals [2]:
            xmin = 0.5
            xmax = 1.5
            text = "say ""hi"""
    item [2]:
        class = "IntervalTier"
        name = "phones"
        xmin = 0
        xmax = 1.5
        intervals: size = 3
        intervals [1]:
            xmin = 0
            xmax = 0.5
            text = "sil"
        intervals [2]:
            xmin = 0.5
            xmax = 1.25
            text = "HH"
        intervals [3]:
            xmin = 1.25
            xmax = 1.5
            text = "AY1"
'''

SHORT_TEXTGRID = """File type = "ooTextFile"
Object class = "TextGrid"

0
1.5
<exists>
3
"IntervalTier"
"phones"
0
1.5
3
0
0.5
"sil"
0.5
1.25
"HH"
1.25
1.5
"AY1"
"TextTier"
"bells"
0
1.5
1
0.7
"ding"
"IntervalTier"
"words"
0
1.5
1
0
1.5
"hi"
"""

EXPECTED_PHONES = [Segment(0.0, 0.5, "sil"), Segment(0.5, 1.25, "HH"), Segment(1.25, 1.5, "AY1")]


def test_timit_phn(tmp_path):
    path = tmp_path / "SA1.PHN"
    path.write_text("0 3050 h#\n3050 4559 sh\n4559 5723 ix\n\n")
    segs = read_timit_phn(path)
    assert segs == [
        Segment(0.0, 3050 / 16000, "h#"),
        Segment(3050 / 16000, 4559 / 16000, "sh"),
        Segment(4559 / 16000, 5723 / 16000, "ix"),
    ]
    assert read_timit_phn(path, sample_rate=8000)[1].start_s == pytest.approx(3050 / 8000)
    path.write_text("0 3050\n")
    with pytest.raises(ValueError, match="SA1.PHN:1"):
        read_timit_phn(path)
    path.write_text("0 100 a\n50 200 b\n")
    with pytest.raises(ValueError, match="overlaps"):
        read_timit_phn(path)


def test_textgrid_long_format(tmp_path):
    path = tmp_path / "long.TextGrid"
    path.write_text(LONG_TEXTGRID)
    assert read_textgrid(path) == EXPECTED_PHONES
    words = read_textgrid(path, tier="words")
    assert words == [Segment(0.0, 0.5, ""), Segment(0.5, 1.5, 'say "hi"')]
    assert read_textgrid(path, tier="words", keep_empty=False) == [Segment(0.5, 1.5, 'say "hi"')]
    assert read_textgrid(path, tier=1) == EXPECTED_PHONES


def test_textgrid_short_format_and_utf16(tmp_path):
    path = tmp_path / "short.TextGrid"
    path.write_text(SHORT_TEXTGRID)
    assert read_textgrid(path) == EXPECTED_PHONES
    assert read_textgrid(path, tier="words") == [Segment(0.0, 1.5, "hi")]
    # Praat saves as UTF-16 when a label is not ASCII.
    utf16 = tmp_path / "utf16.TextGrid"
    utf16.write_bytes(SHORT_TEXTGRID.replace('"HH"', '"ʃ"').encode("utf-16"))
    assert read_textgrid(utf16)[1] == Segment(0.5, 1.25, "ʃ")


def test_textgrid_missing_tier_lists_tiers(tmp_path):
    path = tmp_path / "short.TextGrid"
    path.write_text(SHORT_TEXTGRID)
    with pytest.raises(ValueError, match=r"no tier named 'phone'.*\['phones', 'bells', 'words'\]"):
        read_textgrid(path, tier="phone")
    with pytest.raises(ValueError, match="point tier"):
        read_textgrid(path, tier="bells")
    bad = tmp_path / "bad.TextGrid"
    bad.write_text("hello")
    with pytest.raises(ValueError, match="not a Praat TextGrid"):
        read_textgrid(bad)
    cut = tmp_path / "cut.TextGrid"
    cut.write_text(SHORT_TEXTGRID[:200])
    with pytest.raises(ValueError, match="ends early"):
        read_textgrid(cut)


def test_festival_segs(tmp_path):
    path = tmp_path / "utt.segs"
    path.write_text("#\n0.2200 100 pau\n0.2569 100 dh\n0.3008 100 ax\n")
    assert read_festival_segs(path) == [
        Segment(0.0, 0.22, "pau"),
        Segment(0.22, 0.2569, "dh"),
        Segment(0.2569, 0.3008, "ax"),
    ]
    # An EST header before the '#' is skipped.
    path.write_text("separator ;\nnfields 1\n#\n0.1 26 pau\n0.3 26 k\n")
    assert read_festival_segs(path) == [Segment(0.0, 0.1, "pau"), Segment(0.1, 0.3, "k")]
    path.write_text("#\nabc 100 pau\n")
    with pytest.raises(ValueError, match="bad end time"):
        read_festival_segs(path)


def test_frame_labels_at_frame_centres():
    segs = [Segment(0.0, 0.1, "a"), Segment(0.1, 0.25, "b"), Segment(0.25, 0.3, "c")]
    # 20 Hz frames: centres at 0.025, 0.075, 0.125, ..., 0.375
    labels = frame_labels(segs, frame_rate_hz=20, num_frames=8)
    assert labels == ["a", "a", "b", "b", "b", "c", "c", "c"]  # past the end: nearest (last)
    assert frame_labels(segs, 20, 8, outside="-")[-2:] == ["-", "-"]
    # A gap between segments goes to the nearer neighbour.
    gap = [Segment(0.0, 0.1, "a"), Segment(0.3, 0.4, "b")]
    assert frame_labels(gap, 10, 4) == ["a", "a", "b", "b"]  # centres 0.05, 0.15, 0.25, 0.35
    assert frame_labels(gap, 10, 4, outside="?") == ["a", "?", "?", "b"]
    assert frame_labels(segs, 20, 0) == []
    with pytest.raises(ValueError, match="frame_rate_hz"):
        frame_labels(segs, 0, 3)
    with pytest.raises(ValueError, match="no segments"):
        frame_labels([], 10, 3)


def test_frame_labels_where_the_first_frame_is_centred():
    segs = [Segment(0.0, 0.1, "a"), Segment(0.1, 0.25, "b"), Segment(0.25, 0.3, "c")]
    # Centres 0.0, 0.05, 0.10, ...: frame 2 sits on the a|b boundary and takes b (a segment
    # holds [start, end)); half a frame later (the default) it is b's first full frame too.
    assert frame_labels(segs, 20, 6, first_centre_s=0.0) == ["a", "a", "b", "b", "b", "c"]
    # Centres 0.055, 0.105, ...: every label one frame earlier than at the default 0.025.
    assert frame_labels(segs, 20, 6, first_centre_s=0.055) == ["a", "b", "b", "b", "c", "c"]
    assert frame_labels(segs, 20, 6, first_centre_s=0.025) == frame_labels(segs, 20, 6)


def test_segment_files_round_trip(tmp_path):
    segs = [Segment(0.0, 0.12345, "pau"), Segment(0.12345, 0.5, "a b")]
    path = write_segments(tmp_path / "deep" / "u.txt", segs)
    assert read_segments(path) == segs
    path.write_text("0.0 x pau\n")
    with pytest.raises(ValueError, match="u.txt:1"):
        read_segments(path)
