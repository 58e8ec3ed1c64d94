import dataclasses
import os
import re

import pytest
import yaml

from neardup_core.config import Config, ConfigError, from_dict, load_config

from .conftest import REPO


def test_conf_default_yaml_documents_every_key_with_its_default():
    with open(os.path.join(REPO, "conf", "default.yaml")) as fh:
        documented = yaml.safe_load(fh)
    assert from_dict(documented) == Config()
    for section in dataclasses.fields(Config):
        expected = {f.name for f in dataclasses.fields(getattr(Config(), section.name))}
        assert set(documented[section.name]) == expected, section.name


def test_set_overrides_parse_values_as_yaml():
    cfg = load_config(overrides=["lsh.num_tables=8", "pairs.cosine_threshold=0.95",
                                 "input.extensions=[jpg, png]", "spark.conf={spark.driver.memory: 4g}"])
    assert cfg.lsh.num_tables == 8 and cfg.pairs.cosine_threshold == 0.95
    assert cfg.input.extensions == ("jpg", "png")
    assert cfg.spark.conf == {"spark.driver.memory": "4g"}
    # One Spark setting at a time, added to the others.
    cfg = load_config(overrides=["spark.conf={spark.driver.memory: 4g}", "spark.conf.spark.executor.cores=2"])
    assert cfg.spark.conf == {"spark.driver.memory": "4g", "spark.executor.cores": "2"}
    with pytest.raises(ConfigError, match="spark.conf.spark.executor.memory must be a JVM memory size"):
        load_config(overrides=["spark.conf.spark.executor.memory=100k"])


def test_config_file_then_set_in_that_order(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text("lsh:\n  num_tables: 4\n  bits_per_table: 20\n")
    cfg = load_config(str(path), ["lsh.num_tables=6"])
    assert (cfg.lsh.num_tables, cfg.lsh.bits_per_table) == (6, 20)


@pytest.mark.parametrize("override,message", [
    ("lsh.bits_per_table=80", "lsh.bits_per_table must be in 1..48, got 80"),
    ("lsh.bits_per_table=many", "lsh.bits_per_table must be an integer or 'auto', got 'many'"),
    ("lsh.target_recall=1", "lsh.target_recall must be in 0.5..0.999999, got 1"),
    ("lsh.split_bits=11", "lsh.split_bits must be in 0..10, got 11"),
    ("lsh.num_tables=0", "lsh.num_tables must be in 1..256, got 0"),
    ("pairs.cosine_threshold=1.5", "pairs.cosine_threshold must be in -1.0..1.0, got 1.5"),
    ("lsh.num_tables=many", "lsh.num_tables must be an integer or 'auto', got 'many'"),
    ("lsh.tables=3", "unknown configuration key lsh.tables"),
    ("hashing.num_tables=3", "unknown configuration section 'hashing'"),
    ("input.format=zip", "input.format must be one of"),
    ("output.overwrite=maybe", "output.overwrite must be true or false, got 'maybe'"),
    ("num_tables=3", "expected SECTION.KEY=VALUE"),
    ("input.extensions=[.jpg]", "bare extensions like 'jpg'"),
    ("embed.backend=cuda", "embed.backend must be one of"),
    ("embed.precision=int8", "embed.precision must be one of"),
])
def test_bad_values_name_the_key_and_the_value(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")):
        load_config(overrides=[override])


def test_model_path_and_name_exclude_each_other():
    with pytest.raises(ConfigError, match="set either model.path or model.name, not both"):
        load_config(overrides=["model.path=/m.keras", "model.name=ResNet50"])


def test_unreadable_or_malformed_config_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("lsh: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(str(bad))


def test_sections_check_their_values_when_constructed_directly():
    from neardup_core.config import LshConfig, OutputConfig, PairsConfig

    with pytest.raises(ConfigError, match="lsh.split_bits must be in 0..10, got 11"):
        LshConfig(split_bits=11)
    with pytest.raises(ConfigError, match="pairs.cosine_threshold must be in -1.0..1.0, got 2.0"):
        dataclasses.replace(PairsConfig(), cosine_threshold=2)
    with pytest.raises(ConfigError, match="lsh.max_bucket_size must be an integer, got '9'"):
        LshConfig(max_bucket_size="9")
    with pytest.raises(ConfigError, match="output.path must not be empty"):
        OutputConfig(path=" ")
    with pytest.raises(ConfigError, match="--output is required"):
        OutputConfig().required_path()
    assert OutputConfig(path="out").required_path() == "out"


@pytest.mark.parametrize("value,message", [
    ("[]", "groups.keep must name at least one criterion"),
    ("[pixels]", "entries must be 'NAME asc' or 'NAME desc' ('pixels' is not)"),
    ("[pixels up]", "entries must be 'NAME asc' or 'NAME desc' ('pixels up' is not)"),
    ("[content desc]", "cannot sort by content"),
    ("[bytes desc, bytes asc]", "names a criterion twice"),
    ("[cosine desc]", "cannot sort by cosine"),
])
def test_bad_keep_criteria_are_refused(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[f"groups.keep={value}"])


def test_keep_criteria_end_with_the_id_and_name_manifest_columns():
    cfg = load_config(overrides=["groups.keep=[created_at asc, pixels desc]"])
    assert cfg.groups.criteria() == [("created_at", False), ("pixels", True), ("id", False)]
    assert cfg.groups.manifest_columns() == ["created_at"]
    assert load_config().groups.criteria() == [("pixels", True), ("bytes", True), ("id", False)]
