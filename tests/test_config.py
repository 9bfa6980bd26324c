import pytest
import yaml

from realsyn.config import Config, ConfigError, load_config, to_yaml


def test_defaults_are_the_papers():
    cfg = Config()
    s, i = cfg.extract.sentences, cfg.extract.images
    assert (s.min_words, s.max_words, s.min_entropy) == (3, 81, 0.3)
    assert (s.min_perplexity, s.max_perplexity) == (30, 200)
    assert i.min_side == 100 and i.max_aspect == 3 and abs(i.min_aspect - 1 / 3) < 1e-12


def test_yaml_round_trip_and_every_field_documented(tmp_path):
    text = to_yaml(Config())
    p = tmp_path / "c.yaml"
    p.write_text(text)
    assert load_config(p) == Config()
    leaves = [ln for ln in text.splitlines() if ln.strip() and not ln.strip().startswith("#") and not ln.rstrip().endswith(":")]
    comments = [ln for ln in text.splitlines() if ln.strip().startswith("#")]
    assert len(leaves) == len(comments) > 10


def test_unknown_key_is_one_line_error(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump({"extract": {"images": {"min_sidez": 5}}}))
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value) == "unknown config key 'extract.images.min_sidez'"


def test_out_of_range_is_one_line_error():
    with pytest.raises(ConfigError) as e:
        load_config(None, {"extract.sentences.min_entropy": 2})
    assert "extract.sentences.min_entropy" in str(e.value) and "\n" not in str(e.value)


def test_section_hash_changes_only_with_its_section():
    a = Config()
    b = load_config(None, {"runtime.workers": 7})
    c = load_config(None, {"extract.docs_per_part": 7})
    assert a.section_hash("extract") == b.section_hash("extract") != c.section_hash("extract")
