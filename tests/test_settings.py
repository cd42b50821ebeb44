"""The settings table: every capture option defined once, and every reader of it (the API's
signatures and help, the CLI's flags) showing the same defaults."""

from __future__ import annotations

import argparse
import inspect
import pydoc

import pytest

import llmri
from llmri.cli import main
from llmri.commands import capture as capture_command
from llmri.settings import DEFAULTS, NAMES, CaptureOptions, CaptureSettings, fields, options


def test_the_keyword_types_name_exactly_the_table():
    hints = {k: getattr(v, "__forward_arg__", v) for k, v in CaptureOptions.__annotations__.items()}
    assert tuple(hints) == NAMES
    for f in fields():
        # the keyword may take more forms (a list for a tuple), never fewer
        table = {x.strip() for x in str(f.type).split("|")}
        keyword = {x.strip() for x in hints[f.name].split("|")}
        assert table <= keyword, (f.name, f.type, hints[f.name])


@pytest.mark.parametrize("fn", [llmri.capture, llmri.stream])
def test_signature_and_help_list_every_option_with_its_default(fn):
    params = inspect.signature(fn).parameters
    for f in fields():
        assert params[f.name].default == f.default, f.name
        assert params[f.name].kind is inspect.Parameter.KEYWORD_ONLY
    text = pydoc.render_doc(fn, renderer=pydoc.plaintext)
    for name, _type, default, help_ in options():
        assert f"{name} : " in text and f"default {default!r}" in text
        assert help_ in " ".join(text.split()), name


def _capture_parser() -> argparse.ArgumentParser:
    sub = argparse.ArgumentParser().add_subparsers()
    return capture_command.add_parser(sub)


def test_cli_flags_default_to_the_table():
    args = _capture_parser().parse_args(["hi", "-o", "x.zarr"])
    for name in ("max_new_tokens", "temperature", "top_p", "seed", "reducer", "tile", "reducer_seed", "backend"):
        assert getattr(args, name) == getattr(DEFAULTS, name), name
    help_text = " ".join(_capture_parser().format_help().split())
    assert f"new tokens to generate at most (default {DEFAULTS.max_new_tokens})" in help_text
    assert f"(default {DEFAULTS.reducer})" in help_text


def test_settings_are_checked_when_built_with_one_line():
    for bad, match in [
        ({"max_new_tokens": -1}, "max_new_tokens"),
        ({"temperature": -0.5}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"attention_k": 0}, "attention_k"),
        ({"lens_dtype": "int8"}, "lens_dtype"),
        ({"lens_batch": 0}, "lens_batch"),
        ({"stop": [1]}, "stop"),
        ({"probes": 3}, "probes"),
        ({"probes": [{"up": 1}]}, "probes"),
    ]:
        with pytest.raises(llmri.CaptureError, match=match) as info:
            CaptureSettings(**bad)
        assert "\n" not in str(info.value)
    with pytest.raises(TypeError, match="unknown capture option 'max_tokens'"):
        DEFAULTS.replace(max_tokens=3)


def test_a_settings_value_and_keywords_over_it(synthetic_model):
    base = CaptureSettings(max_new_tokens=6, stop="never")
    assert base.stop == ("never",)  # a string is one stop string
    s = llmri.capture(synthetic_model, "hi", base, max_new_tokens=3)
    assert len(s) - len(s.tokens.role[: s.tokens.role.index("generated")]) == 3
    st = llmri.stream(synthetic_model, "hi", base)
    assert st.options == base and st.settings.max_new_tokens == 6
    st.close()
    assert base.to_dict()["stop"] == ["never"]
    assert base.changed() == {"max_new_tokens": 6, "stop": ("never",)}
    with pytest.raises(llmri.CaptureError, match="settings must be a CaptureSettings"):
        llmri.stream(synthetic_model, "hi", {"max_new_tokens": 3})  # type: ignore[arg-type]


def test_cli_neurons_reducer_needs_no_tile(tmp_path, capsys):
    # the CLI's old literal default tile (16x16 = 256 values) refused the neurons reducer's 576
    rc = main(["capture", "hi", "-o", str(tmp_path / "n.zarr"), "--backend", "synthetic", "--reducer", "neurons",
               "--max-new-tokens", "2"])  # fmt: skip
    out, err = capsys.readouterr()
    assert rc == 0, err
    session = llmri.open_store(tmp_path / "n.zarr").session(out.strip())
    assert session.meta["reducer"]["kind"] == "neurons"


def test_live_chat_turns_take_the_engines_settings_and_the_conversation_default(synthetic_model, tmp_path):
    from llmri.settings import CHAT_DEFAULTS
    from llmri.viewer.live import ModelEngine
    from llmri.viewer.live.requests import check_request

    engine = ModelEngine(synthetic_model, frame_dtype="float32")
    messages, turn = check_request({"messages": [{"role": "user", "content": "hi"}]}, engine)
    assert turn["max_new_tokens"] == CHAT_DEFAULTS.max_new_tokens
    store = llmri.open_store(tmp_path / "live.zarr", create=True)
    stream = engine.open(messages, {**turn, "max_new_tokens": 2}, store, {})
    frames = list(stream)
    assert stream.meta["frame_dtype"] == "float32" and frames[0].tiles["resid"].dtype.name == "float32"
    assert stream.options.frame_dtype == "float32" and stream.settings.max_new_tokens == 2


def test_llmri_view_takes_frame_dtype_for_live_chat():
    from llmri.commands import view as view_command

    sub = argparse.ArgumentParser().add_subparsers()
    p = view_command.add_parser(sub)
    assert p.parse_args(["x.zarr", "--model", "default", "--frame-dtype", "bfloat16"]).frame_dtype == "bfloat16"
    with pytest.raises(llmri.CaptureError, match="--frame-dtype .* give --model"):
        view_command.live_plugin(p.parse_args(["x.zarr", "--frame-dtype", "float32"]))


def test_the_live_hello_carries_the_conversation_defaults(synthetic_model):
    from llmri.settings import CHAT_DEFAULTS
    from llmri.viewer.live import LiveChat, ModelEngine

    info = LiveChat(ModelEngine(synthetic_model)).describe()
    assert info["defaults"]["max_new_tokens"] == CHAT_DEFAULTS.max_new_tokens
    assert info["defaults"]["temperature"] == CHAT_DEFAULTS.temperature
