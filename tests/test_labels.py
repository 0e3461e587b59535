import pytest
from hypothesis import given
from hypothesis import strategies as st

from exporter.errors import LabelsError
from exporter.labels import check_against_model, parse_labels, read_labels


def test_text_and_json(tmp_path):
    (tmp_path / "l.txt").write_text("cat\ndog\n")
    (tmp_path / "l.json").write_text('["cat", "dog"]')
    assert read_labels(tmp_path / "l.txt") == read_labels(tmp_path / "l.json") == ["cat", "dog"]


@pytest.mark.parametrize(
    "content, message",
    [
        (b"cat\n\ndog\n", "empty"),
        (b"cat\ncat\n", "twice"),
        (b"cat\n", "at least 2"),
        (b"\xff\xfecat\n", "UTF-16"),
        (b"caf\xe9\ndog\n", "not UTF-8"),
        (b'["cat", 3]', "list of strings"),
        (b'["cat",', "not valid JSON"),
        (b"cat \ndog\n", "spaces"),
    ],
)
def test_bad_label_files_name_the_file_and_problem(tmp_path, content, message):
    path = tmp_path / "labels.txt"
    path.write_bytes(content)
    with pytest.raises(LabelsError, match=message) as info:
        read_labels(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_count_must_match_model():
    with pytest.raises(LabelsError, match="has 2 labels but the model outputs 3"):
        check_against_model(["a", "b"], 3, source="labels.txt")


def test_missing_file(tmp_path):
    with pytest.raises(LabelsError, match="not found"):
        read_labels(tmp_path / "nope.txt")


@given(st.text(max_size=60))
def test_any_text_gives_labels_or_labels_error(text):
    try:
        labels = parse_labels(text)
    except LabelsError:
        return
    assert len(labels) >= 2 and len(set(labels)) == len(labels) and all(lab.strip() == lab and lab for lab in labels)


def test_bom_crlf_and_trailing_blank_lines_are_accepted(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeffcat\r\ndog\r\n\r\n  \n\n".encode())
    assert read_labels(path) == ["cat", "dog"]
    path.write_bytes(b"cat\r\n\r\ndog\r\n")  # a blank line between labels is still an error: which class is missing?
    with pytest.raises(LabelsError, match="label 2 is empty"):
        read_labels(path)
