"""Hostile configuration and command lines (issue 13): every one is exit 2, one line, nothing left.

End-to-end cases run ``python -m changedet`` in a child process (``tests/subproc.py``), with
inputs that fail before the pipeline runs; pure functions are tested in process.
"""

from __future__ import annotations

import pytest
import yaml

from changedet import batch
from changedet.config import Config, ConfigError, _Section, build_config, load_config
from changedet.errors import InputError, shown
from changedet.learned import training
from changedet.yamlfile import MAX_DEPTH, MAX_VALUES, YamlRefused, load_text, read_yaml

from .conftest import SAMPLE_TILES
from .subproc import assert_nothing_left, assert_one_line_error, cli

BEFORE, AFTER = SAMPLE_TILES / "camp" / "before.tif", SAMPLE_TILES / "camp" / "after.tif"


@pytest.fixture
def run(tmp_path):
    """Run the CLI in ``tmp_path/work`` with TMPDIR ``tmp_path/tmp``; ``run.check`` asserts the contract."""
    work, tmp = tmp_path / "work", tmp_path / "tmp"
    work.mkdir()

    class Runner:
        dir = work

        def __call__(self, *args):
            return cli(*args, tmpdir=tmp, cwd=work)

        def write(self, name, text):
            (work / name).write_text(text, encoding="utf-8")
            return work / name

        def check(self, proc, *needles, out="out"):
            """Exit 2, one line with every needle, no ``out`` and nothing of changedet's left."""
            line = assert_one_line_error(proc, *needles)
            assert "Traceback" not in proc.stderr
            assert not (work / out).exists()
            assert_nothing_left(tmp, work)
            return line

    return Runner()


def detect(*extra):
    return ("detect", BEFORE, AFTER, "--out", "out", *extra)


def bomb(levels: int = 6, width: int = 10) -> str:
    """A "billion laughs": ``width ** levels`` values from a few hundred bytes (``*a5``: a million).

    A million is five times the limit, and small enough that, should the limit ever be lost, the
    test fails on its message rather than taking the machine's memory with it.
    """
    lines = [f"a0: &a0 [{', '.join(['1'] * width)}]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- 1. YAML resource bombs


def test_alias_bomb_in_config_is_refused_before_expansion(run):
    cfg = run.write("bomb.yaml", bomb() + "measure:\n  cva_k: *a5\n")
    run.check(run(*detect("--config", cfg)), "bomb.yaml", "aliases expand to more than")


def test_alias_bomb_in_batch_manifest(run):
    m = run.write("sites.yaml", bomb() + "sites:\n  - {name: a, before: b.tif, after: a.tif, config: {x: *a5}}\n")
    run.check(run("batch", m, "--out", "out"), "sites.yaml", "aliases expand")


def test_alias_bomb_in_training_manifest(run):
    m = run.write("train.yaml", bomb() + "pairs:\n  - {before: *a5, after: a.tif, label: l.tif}\n")
    run.check(run("train", m, "--out", "out.npz"), "train.yaml", "aliases expand", out="out.npz")


def test_alias_bomb_in_a_set_value(run):
    value = "[" + ", ".join(["&a0 [" + ", ".join(["1"] * 10) + "]"]
                            + [f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 6)]) + "]"
    run.check(run(*detect("--set", f"decide.method={value}")), "--set", "aliases expand")


def test_deep_nesting_is_one_line_not_a_recursion_error(run):
    cfg = run.write("deep.yaml", "decide: " + "[" * 5000 + "]" * 5000 + "\n")
    run.check(run(*detect("--config", cfg)), "deep.yaml", "nested more than")


def test_oversized_config_is_refused_unread(run):
    cfg = run.write("big.yaml", "# padding\n" * 110_000)
    run.check(run(*detect("--config", cfg)), "big.yaml", "too large")


def test_duplicate_keys_are_refused(run):
    cfg = run.write("dup.yaml", "decide:\n  min_area_m2: 3\n  min_area_m2: 40\n")
    run.check(run(*detect("--config", cfg)), "dup.yaml", "'min_area_m2' appears twice", "line 3")


def test_bounded_loader_keeps_small_anchors_and_merge_keys():
    text = "base: &b {min_area_m2: 3, open_px: 2}\ndecide:\n  <<: *b\n  min_area_m2: 9\nother: *b\n"
    assert load_text(text) == {"base": {"min_area_m2": 3, "open_px": 2}, "decide": {"min_area_m2": 9, "open_px": 2},
                               "other": {"min_area_m2": 3, "open_px": 2}}
    assert load_text(bomb(levels=3)) == yaml.safe_load(bomb(levels=3))  # 1000 values: fine


@pytest.mark.parametrize("text,problem", [
    (bomb(), "expand to more than"),
    ("a: &x [1, *x]\n", "refers to a value that contains it"),
    ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "nested more than"),
    # aliases each within the limit, nesting past it once expanded
    ("".join(f"l{i}: &l{i} [[[[[[[[*l{i - 1}]]]]]]]]\n" if i else "l0: &l0 [1]\n" for i in range(12)),
    "nest more than"),
    ("a: 1\nb: 2\na: 3\n", "appears twice"),
])
def test_bounded_loader_refuses(text, problem):
    with pytest.raises(YamlRefused, match=problem):
        load_text(text)


def test_values_count_limit_is_not_hit_by_a_plain_large_manifest():
    sites = [{"name": f"s{i}", "before": f"b{i}.tif", "after": f"a{i}.tif"} for i in range(5000)]
    assert len(load_text(yaml.safe_dump({"sites": sites}))["sites"]) == 5000
    assert MAX_VALUES > 5000 * 7


@pytest.mark.parametrize("content,needle", [
    (b"\xff\xfe\x00bad", "not UTF-8"),
    (b"- a\n- b\n", "mapping"),
    (b"just a scalar\n", "mapping"),
])
def test_config_file_that_is_not_a_mapping_of_text(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=needle):
        load_config(path)


@pytest.mark.parametrize("content,needle", [(None, "is a folder"), ("- 1\n- 2\n", "not a list"), ("42\n", "not a int")])
def test_config_that_is_a_folder_list_or_scalar(run, content, needle):
    if content is None:
        cfg = run.dir / "conf.yaml"
        cfg.mkdir()
    else:
        cfg = run.write("conf.yaml", content)
    run.check(run(*detect("--config", cfg)), "conf.yaml", needle)


def test_read_yaml_of_a_missing_file_names_it(tmp_path):
    with pytest.raises(InputError, match="nope.yaml: cannot read the training manifest"):
        read_yaml(tmp_path / "nope.yaml", "training manifest", InputError)


def test_shown_bounds_every_value():
    assert len(shown("x" * 10**6)) <= 60
    dag = [1] * 10
    for _ in range(30):  # 10**30 values once expanded; the repr must not try
        dag = [dag] * 10
    assert len(shown(dag)) <= 60
    loop: list = [1]
    loop.append(loop)
    assert len(shown(loop)) <= 60
    assert shown("camp\n") == "'camp\\n'"  # control characters are escaped, never printed raw


@pytest.mark.parametrize("args", [
    ("--set", "decide.method=" + "x" * 20_000),
    ("--set", "x" * 20_000 + "=1"),
    ("--set", "y" * 20_000),
    ("--preset", "p" * 20_000),
    ("--site", "s\n" * 10_000),
])
def test_error_messages_never_echo_a_long_value(run, args):
    line = run.check(run(*detect(*args)), args[0])
    assert len(line) < 300


def test_manifest_errors_never_echo_a_long_value(run):
    m = run.write("m.yaml", yaml.safe_dump({"sites": [{"name": "n" * 50_000, "before": "b", "after": "a"}]}))
    line = run.check(run("batch", m, "--out", "out"), "m.yaml", "name")
    assert len(line) < 300


# --------------------------------------------------------------------------- 2. non-finite numbers


def _float_keys(model=Config, prefix=""):
    for name, field in model.model_fields.items():
        ann = field.annotation
        if isinstance(ann, type) and issubclass(ann, _Section):
            yield from _float_keys(ann, f"{prefix}{name}.")
        elif ann in (float, float | None):
            yield f"{prefix}{name}"


@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf", "1e999"])
def test_every_float_key_refuses_non_finite_values(value):
    keys = list(_float_keys())
    assert "gsd_m" in keys and "decide.min_area_m2" in keys and len(keys) > 50
    for key in keys:
        with pytest.raises(ConfigError, match=f"--set: config key '{key}': Input should be a finite number"):
            build_config(sets=[f"{key}={value}"])


@pytest.mark.parametrize("args,needle", [
    (("--gsd", "nan"), "--gsd nan"),
    (("--gsd", "inf"), "--gsd inf"),
    (("--gsd", "-inf"), "--gsd -inf"),
    (("--gsd", "1e308"), "--gsd 1e+308"),
    (("--set", "gsd_m=.inf"), "'gsd_m'"),
    (("--set", "decide.min_area_m2=.nan"), "'decide.min_area_m2'"),
])
def test_non_finite_options_are_refused_up_front(run, args, needle):
    run.check(run(*detect(*args)), needle)


def test_non_finite_value_in_a_config_file_names_the_file(run):
    cfg = run.write("c.yaml", "measure:\n  cva_k: .inf\n")
    run.check(run(*detect("--config", cfg)), "c.yaml", "'measure.cva_k'", "finite")


@pytest.mark.parametrize("site", ["gsd_m: .nan", "gsd_m: .inf", "gsd_m: true", "gsd_m: 1e300", "config: {gsd_m: -.inf}"])
def test_non_finite_values_in_a_batch_manifest(run, site):
    m = run.write("m.yaml", f"sites:\n  - {{name: a, before: b.tif, after: a.tif, {site}}}\n")
    run.check(run("batch", m, "--out", "out"), "m.yaml", "gsd_m")


def test_synth_rotation_nan(run):
    run.check(run("synth", "--out", "out", "--rotation-deg", "nan"), "--rotation-deg nan")


def test_training_manifest_epochs_inf(run):
    m = run.write("t.yaml", "pairs:\n  - {before: b.tif, after: a.tif, label: l.tif}\nepochs: .inf\n")
    run.check(run("train", m, "--out", "out.npz"), "t.yaml", "epochs inf", out="out.npz")


# --------------------------------------------------------------------------- 3. typer's own usage errors


@pytest.mark.parametrize("args,needles", [
    (("detect", BEFORE, AFTER), ("Missing option '--out'", "(see 'changedet detect --help')")),
    (("detect", BEFORE, AFTER, "--out", "out", "--gsd", "abc"), ("'--gsd'", "changedet detect --help")),
    (("detect", BEFORE, AFTER, "--out", "out", "--bogus"), ("--bogus", "changedet detect --help")),
    (("detect",), ("Missing argument 'before'", "changedet detect --help")),
    (("synth", "--out", "out", "--size", "big"), ("'--size'", "changedet synth --help")),
    (("presets", "extra"), ("extra", "changedet presets --help")),
    (("nosuchcommand",), ("nosuchcommand", "(see 'changedet --help')")),
    (("--bogus", "presets"), ("--bogus", "changedet --help")),
    (("detect", "--bo\x1bgus\nx"), ("--bo\\x1bgus",)),  # control characters shown escaped, on one line
])
def test_usage_errors_are_one_line(run, args, needles):
    run.check(run(*args), *needles)


def test_help_version_and_no_arguments_are_unchanged(run):
    for args in (("--help",), ("-h",), ("detect", "--help")):
        proc = run(*args)
        assert proc.returncode == 0 and "Usage" in proc.stdout and proc.stderr == "", (args, proc.stderr)
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout.startswith("changedet ")
    proc = run()  # help, as typer's no_args_is_help has always answered: on stdout, exit 2
    assert proc.returncode == 2 and "Usage" in proc.stdout and "error" not in proc.stderr


def test_exit_codes_of_ordinary_runs_are_unchanged(run):
    assert run("presets").returncode == 0
    m = run.write("m.yaml", "sites:\n  - {name: a, before: missing.tif, after: missing.tif}\n")
    proc = run("-q", "batch", m, "--out", "runs")  # the site fails: exit 1, the batch summary written
    assert proc.returncode == 1, proc.stderr
    assert (run.dir / "runs" / "batch_summary.json").is_file()


# --------------------------------------------------------------------------- 4. names


@pytest.mark.parametrize("name", ["camp\n", "camp\nx", "../up", "a/b", "-x", ".hidden", "n" * 101, "", True])
def test_batch_site_names_must_match_whole(tmp_path, name):
    m = tmp_path / "m.yaml"
    m.write_text(yaml.safe_dump({"sites": [{"name": name, "before": "b", "after": "a"}]}))
    with pytest.raises(ConfigError, match="name"):
        batch.read_manifest(m)


def test_batch_site_name_with_a_trailing_newline(run):
    m = run.write("m.yaml", 'sites:\n  - {name: "camp\\n", before: b.tif, after: a.tif}\n')
    run.check(run("batch", m, "--out", "out"), "m.yaml", "'camp\\n'", "names a folder")


@pytest.mark.parametrize("site", ["camp\n", "a\x1b[31mred", "", " ", "x" * 201, "\u202eevil"])
def test_detect_site_must_be_one_printable_line(run, site):
    run.check(run(*detect("--site", site)), "--site")


# --------------------------------------------------------------------------- 5. other values that make no sense


@pytest.mark.parametrize("args,needle", [
    (("synth", "--out", "out", "--size", "0"), "--size 0"),
    (("synth", "--out", "out", "--size", "-5"), "--size -5"),
    (("synth", "--out", "out", "--size", str(10**9)), "--size 1000000000"),
    (("synth", "--out", "out", "--seed", "-1"), "--seed -1"),
    (("train", "m.yaml", "--out", "out.npz", "--epochs", "0"), "--epochs 0"),
    (("train", "m.yaml", "--out", "out.npz", "--augment", "99"), "--augment 99"),
    (("train", "m.yaml", "--out", "out.npz", "--seed", "-3"), "--seed -3"),
    (("detect", BEFORE, AFTER, "--out", "out", "--set", "decide.min_area_m2"), "--set 'decide.min_area_m2'"),
    (("detect", BEFORE, AFTER, "--out", "out", "--set", "=3"), "--set '=3'"),
    (("detect", BEFORE, AFTER, "--out", "out", "--set", "decide..x=3"), "--set"),
    (("detect", BEFORE, AFTER, "--out", "out", "--set", "colour=red"), "unknown config key 'colour'"),
    (("detect", BEFORE, AFTER, "--out", "out", "--preset", ""), "--preset '': unknown preset"),
    (("detect", BEFORE, AFTER, "--out", "out", "--preset", "../presets/vhr-0.5m"), "unknown preset"),
])
def test_nonsense_option_values(run, args, needle):
    run.check(run(*args), needle)


@pytest.mark.parametrize("manifest,needles", [
    ("sites:\n  - {name: a, before: [1, 2], after: a.tif}\n", ("before [1, 2]", "a path")),
    ("sites:\n  - {name: a, before: 7, after: a.tif}\n", ("before 7",)),
    ("config: [1]\nsites:\n  - {name: a, before: b.tif, after: a.tif}\n", ("config must be a mapping",)),
    ("config: {preset: ../../x}\nsites:\n  - {name: a, before: b.tif, after: a.tif}\n", ("unknown preset",)),
])
def test_batch_manifest_values_of_the_wrong_kind(run, manifest, needles):
    m = run.write("m.yaml", manifest)
    run.check(run("batch", m, "--out", "out"), "m.yaml", *needles)


@pytest.mark.parametrize("extra,needle", [
    ("epoch: 5\n", "unknown key 'epoch'"),
    ("augment: 9\n", "augment 9"),
    ("seed: -1\n", "seed -1"),
    ("change_values: [x]\n", "change_values"),
    ("epochs: true\n", "epochs True"),
])
def test_training_manifest_values_of_the_wrong_kind(run, extra, needle):
    m = run.write("t.yaml", "pairs:\n  - {before: b.tif, after: a.tif, label: l.tif}\n" + extra)
    run.check(run("train", m, "--out", "out.npz"), "t.yaml", needle, out="out.npz")


def test_training_pair_with_an_unknown_key(tmp_path):
    m = tmp_path / "t.yaml"
    m.write_text("pairs:\n  - {before: b.tif, after: a.tif, label: l.tif, wieght: 2}\n")
    with pytest.raises(InputError, match=r"pairs\[0\]: unknown key 'wieght'"):
        training.load_manifest(m)


def test_training_options_are_checked_for_library_callers_too():
    with pytest.raises(InputError, match="epochs 0"):
        training.check_options({"epochs": 0})
    assert training.check_options({}) == {"augment": 2, "epochs": 30, "seed": 0}


@pytest.mark.parametrize("key", ["registration.upsample", "registration.chip_px", "measure.smooth_sigma_px",
                                 "measure.ssim_sigma_px", "decide.open_px", "objects.ring_px",
                                 "processing.window_px", "model.window_px", "model.threads"])
def test_sizes_that_would_exhaust_memory_are_refused(key):
    with pytest.raises(ConfigError, match=f"--set: config key '{key}': Input should be less than or equal"):
        build_config(sets=[f"{key}=1000000000"])


def test_a_huge_size_is_refused_before_any_work(run):
    run.check(run(*detect("--set", "measure.smooth_sigma_px=1e9")), "'measure.smooth_sigma_px'", "less than")


def test_every_error_is_one_bounded_printable_line(run):
    """Messages of other modules quote paths too: the CLI escapes newlines and bounds the length."""
    line = run.check(run("detect", run.dir / "no\nsuch.tif", AFTER, "--out", "out"), "no\\nsuch.tif")
    assert "\x1b" not in line
    line = run.check(run(*detect("--set", "model.path=" + "x" * 5000)), "model file", "check the path")
    assert len(line) < 600
