"""Spec parsing and validation: every refusal names its culprit; valid specs parse exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from netmorph_cli.errors import NetmorphError, SpecError
from netmorph_cli.spec.graph import Edge, ModuleGraph
from netmorph_cli.spec.parse import load_spec, parse_spec, spec_from_dict

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "modules"


def edge(src: str, dst: str, kernel: object = 3, name: str | None = None) -> dict:
    e: dict = {"from": src, "to": dst, "kernel": kernel}
    if name is not None:
        e["name"] = name
    return e


def module(*edges: dict, **top: object) -> dict:
    """A spec dict with declared source s and sink t unless overridden (None drops a key)."""
    spec: dict = {"source": "s", "sink": "t", **top, "edges": list(edges)}
    return {k: v for k, v in spec.items() if v is not None}


def refused(spec: object) -> str:
    """The SpecError message for ``spec`` (a dict, or JSON text when a str)."""
    with pytest.raises(SpecError) as info:
        if isinstance(spec, str):
            parse_spec(spec)
        else:
            spec_from_dict(spec)
    return str(info.value)


def test_spec_error_is_bad_input():
    assert issubclass(SpecError, NetmorphError)
    assert SpecError.exit_code == 2


# -- cycles ---------------------------------------------------------------------------------
def test_cycle_between_declared_source_and_sink_is_printed():
    msg = refused(module(edge("s", "a"), edge("a", "b"), edge("b", "a"), edge("b", "t")))
    assert "cycle" in msg
    assert "a → b → a" in msg


def test_cycle_with_inferred_terminals_is_printed():
    # every blob has an incoming edge, so there is no source: the cycle is the reason
    msg = refused({"edges": [edge("a", "b", name="F"), edge("b", "c"), edge("c", "a")]})
    assert "cycle" in msg
    assert "a → b → c → a" in msg


def test_self_loop_is_a_cycle():
    msg = refused({"edges": [edge("s", "t"), edge("t", "t")]})
    assert "t → t" in msg


# -- sources and sinks ----------------------------------------------------------------------
def test_declared_source_with_incoming_edges_is_refused():
    msg = refused(module(edge("x", "s", name="Fin"), edge("s", "t"), source="s"))
    assert "source 's'" in msg
    assert "Fin" in msg


def test_declared_sink_with_outgoing_edges_is_refused():
    msg = refused(module(edge("s", "t"), edge("t", "y", name="Fout")))
    assert "sink 't'" in msg
    assert "Fout" in msg


def test_several_sources():
    msg = refused({"edges": [edge("s", "t"), edge("x", "t")]})
    assert "several sources" in msg
    assert "'s'" in msg and "'x'" in msg


def test_several_sinks():
    msg = refused({"edges": [edge("s", "t"), edge("s", "u")]})
    assert "several sinks" in msg
    assert "'t'" in msg and "'u'" in msg


def test_same_source_and_sink():
    msg = refused(module(edge("s", "t"), sink="s"))
    assert "same blob 's'" in msg


# -- blobs off every s→t path ---------------------------------------------------------------
def test_blob_that_cannot_reach_the_sink():
    msg = refused(module(edge("s", "t"), edge("s", "a", name="Fd")))
    assert "blob 'a' is not on any path from 's' to 't'" in msg
    assert "cannot reach 't'" in msg
    assert "Fd" in msg  # the edge into it


def test_blob_not_reachable_from_the_source():
    msg = refused(module(edge("s", "t"), edge("d", "t", name="Fd")))
    assert "blob 'd'" in msg
    assert "not reachable from 's'" in msg
    assert "Fd" in msg


def test_dangling_chain_names_its_first_blob():
    msg = refused(module(edge("s", "a"), edge("a", "t"), edge("a", "x"), edge("x", "y")))
    assert "blob 'x'" in msg


# -- unknown blobs ----------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["source", "sink"])
def test_unknown_terminal_blob(role):
    msg = refused(module(edge("s", "t"), **{role: "q"}))
    assert "unknown blob 'q'" in msg
    assert role in msg


def test_unknown_blob_in_channels():
    msg = refused(module(edge("s", "a"), edge("a", "t"), channels={"a": 8, "zz": 8}))
    assert "unknown blob 'zz'" in msg
    assert "channels" in msg


# -- edges ----------------------------------------------------------------------------------
def test_duplicate_edge_name():
    msg = refused(module(edge("s", "t", name="F1"), edge("s", "t", name="F1")))
    assert "duplicate edge name 'F1'" in msg


def test_default_names_never_clash_with_explicit_names():
    g = spec_from_dict(module(edge("s", "t"), edge("s", "t", name="e1")))
    names = [e.name for e in g.edges]
    assert len(set(names)) == 2
    assert names[1] == "e1"


@pytest.mark.parametrize("kernel, shown", [
    (2, "2"), (0, "0"), (-3, "-3"), (3.0, "3.0"), (2.5, "2.5"), (True, "true"),
    ("3", '"3"'), (None, "null"), ([3, 2], "2"), ([3, 3.0], "3.0"), ([-1, 3], "-1"),
])
def test_bad_kernel_value(kernel, shown):
    msg = refused(module(edge("s", "t", kernel=kernel, name="Fk")))
    assert "edge 'Fk'" in msg
    assert f"bad kernel size {shown}" in msg


@pytest.mark.parametrize("kernel, n", [([3], 1), ([3, 3, 3], 3), ([], 0)])
def test_kernel_list_of_wrong_length(kernel, n):
    msg = refused(module(edge("s", "t", kernel=kernel, name="Fk")))
    assert "edge 'Fk'" in msg
    assert f"a list of {n}" in msg


def test_bad_kernel_of_unnamed_edge_names_its_position():
    msg = refused(module(edge("s", "a"), edge("a", "t", kernel=4)))
    assert "edge #2" in msg


@pytest.mark.parametrize("width, shown", [
    (0, "0"), (-4, "-4"), (8.0, "8.0"), (2.5, "2.5"), ("8", '"8"'), (True, "true"),
    (None, "null"),
])
def test_bad_width(width, shown):
    msg = refused(module(edge("s", "a"), edge("a", "t"), channels={"a": width}))
    assert f"bad width {shown} for blob 'a'" in msg


@pytest.mark.parametrize("width", ["x", "-1x", "0x", "0.0x", "abc", "1e9x", "", "2.5",
                                   "x2", "2.5xx", "auto2", " ", "1" * 40 + "x"])
def test_bad_width_string_is_one_spec_error_naming_the_blob(width):
    """Widths as text are "Nx" (N × the layer's output channels) or "auto"; anything else
    is refused with what a width may be, naming the blob."""
    msg = refused(module(edge("s", "a"), edge("a", "t"), channels={"a": width}))
    assert "blob 'a'" in msg and '"2.5x"' in msg and '"auto"' in msg, msg
    assert "\n" not in msg


def test_relative_width_beyond_every_layer_is_refused():
    msg = refused(module(edge("s", "a"), edge("a", "t"), channels={"a": "70000x"}))
    assert "blob 'a'" in msg and "limit of 65536 channels" in msg


@pytest.mark.parametrize("width, rule", [("2.5x", "2.5x"), ("3X", "3x"), (" 0.5 x ", "0.5x"),
                                         (".75x", ".75x"), ("auto", "auto"),
                                         ("AUTO", "auto")])
def test_width_rules_parse_and_round_trip(width, rule):
    graph = spec_from_dict(module(edge("s", "a"), edge("a", "b"), edge("b", "t"),
                                  channels={"a": width, "b": 12}))
    assert graph.width_rules == {"a": rule} and graph.channels == {"b": 12}
    assert graph.to_spec()["channels"] == {"b": 12, "a": rule}
    again = spec_from_dict(json.loads(json.dumps(graph.to_spec())))
    assert again.width_rules == graph.width_rules and again.channels == graph.channels


def test_channels_not_an_object():
    assert "'channels' must be an object" in refused(module(edge("s", "t"), channels=[8]))


@pytest.mark.parametrize("blob, role", [("s", "source"), ("t", "sink")])
def test_channels_for_source_or_sink(blob, role):
    msg = refused(module(edge("s", "a"), edge("a", "t"), channels={blob: 16}))
    assert f"{role} '{blob}'" in msg
    assert "channels" in msg


def test_channels_for_inferred_source_is_refused_too():
    msg = refused({"channels": {"s": 16}, "edges": [edge("s", "a"), edge("a", "t")]})
    assert "source 's'" in msg


# -- malformed JSON and file errors ---------------------------------------------------------
def test_malformed_json_names_line_and_column():
    text = '{\n  "edges": [\n    {"from": "s", "to": "t" "kernel": 3}\n  ]\n}'
    msg = refused(text)
    assert "malformed JSON" in msg
    assert "line 3, column 29" in msg
    assert "Expecting ',' delimiter" in msg


def test_malformed_json_file_names_the_file(write_spec):
    path = write_spec('{"edges": [', name="broken.json")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    msg = str(info.value)
    assert "broken.json" in msg
    assert "line 1, column 12" in msg


def test_empty_file_is_refused_as_empty(write_spec):
    with pytest.raises(SpecError, match="is empty: a module spec is a JSON object"):
        load_spec(write_spec(""))


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(SpecError) as info:
        load_spec(missing)
    assert str(missing) in str(info.value)
    assert "does not exist" in str(info.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(SpecError, match="is a directory"):
        load_spec(tmp_path)


def test_file_that_is_not_utf8(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(SpecError, match="cannot read spec file"):
        load_spec(path)


@pytest.mark.parametrize("data, kind", [([], "a list"), ("s→t", "a string"), (3, "a number"),
                                         (None, "null")])
def test_spec_that_is_not_an_object(data, kind):
    msg = refused(json.dumps(data))
    assert "must be a JSON object" in msg
    assert kind in msg


# -- missing and unknown keys ---------------------------------------------------------------
def test_missing_edges_key():
    assert "missing the key 'edges'" in refused({"source": "s", "sink": "t"})


@pytest.mark.parametrize("key", ["from", "to", "kernel"])
def test_edge_missing_a_key(key):
    e = edge("s", "t", name="F1")
    del e[key]
    msg = refused(module(e))
    assert f"edge 'F1' is missing the key '{key}'" in msg


def test_unnamed_edge_missing_a_key_names_its_position():
    msg = refused(module(edge("s", "a"), {"from": "a", "kernel": 3}))
    assert "edge #2 is missing the key 'to'" in msg


def test_unknown_top_level_key():
    msg = refused({"edge": [edge("s", "t")], "edges": [edge("s", "t")]})
    assert "unknown key 'edge'" in msg
    assert "edges" in msg  # the list of known keys shows the likely fix


def test_unknown_edge_key():
    msg = refused(module({"name": "F1", "from": "s", "to": "t", "kernal": 3}))
    assert "edge 'F1'" in msg
    assert "unknown key 'kernal'" in msg


@pytest.mark.parametrize("bad", [3, "", None, ["a"]])
def test_blob_name_must_be_a_non_empty_string(bad):
    msg = refused(module(edge("s", bad, name="F1")))
    assert "edge 'F1'" in msg
    assert "'to' must be a blob name" in msg


@pytest.mark.parametrize("bad", [3, "", ["s"]])
def test_declared_terminal_must_be_a_name(bad):
    assert "'source' must be a blob name" in refused(module(edge("s", "t"), source=bad))


def test_declared_terminal_null_is_refused():
    msg = refused('{"source": null, "edges": [{"from": "s", "to": "t", "kernel": 3}]}')
    assert "'source' must be a blob name" in msg


@pytest.mark.parametrize("bad", [3, ""])
def test_edge_name_must_be_a_non_empty_string(bad):
    assert "'name' must be a non-empty string" in refused(module(edge("s", "t", name=bad)))


def test_module_name_must_be_a_string():
    assert "'name' must be a string" in refused(module(edge("s", "t"), name=7))


def test_edge_that_is_not_an_object():
    assert "edge #1 must be a JSON object" in refused(module(["s", "t", 3]))


def test_edges_not_a_list():
    assert "'edges' must be a list" in refused({"edges": {"from": "s", "to": "t"}})


# -- empty module ---------------------------------------------------------------------------
def test_empty_module():
    assert "module is empty" in refused({"edges": []})


def test_empty_graph_check():
    with pytest.raises(SpecError, match="module is empty"):
        ModuleGraph("s", "t", ()).check()


# -- valid specs ----------------------------------------------------------------------------
def test_module_d_parses_exactly():
    g = load_spec(EXAMPLES / "D.json")
    assert g.name == "D"
    assert (g.source, g.sink) == ("s", "t")
    assert g.edges[0] == Edge("F1", "s", "a", (3, 3))
    assert [e.name for e in g.edges] == [f"F{i}" for i in range(1, 8)]
    assert set(g.blobs) == {"s", "a", "b", "c", "t"}
    assert g.blobs[0] == "s" and g.blobs[-1] == "t"


def test_rectangular_and_square_kernels():
    g = spec_from_dict(module(edge("s", "a", [1, 3]), edge("a", "b", [5, 1]),
                              edge("b", "t", 7)))
    assert [e.kernel for e in g.edges] == [(1, 3), (5, 1), (7, 7)]


def test_parallel_edges_are_kept():
    g = spec_from_dict(module(edge("s", "t", 3, "F1"), edge("s", "t", 1, "F2")))
    assert [(e.name, e.src, e.dst, e.kernel) for e in g.edges] == [
        ("F1", "s", "t", (3, 3)), ("F2", "s", "t", (1, 1))]


def test_source_and_sink_are_inferred():
    g = spec_from_dict({"edges": [edge("a", "t"), edge("in", "a"), edge("in", "t")]})
    assert (g.source, g.sink) == ("in", "t")


def test_default_edge_names_follow_position():
    g = spec_from_dict(module(edge("s", "a"), edge("a", "t", name="mid"), edge("s", "t")))
    assert [e.name for e in g.edges] == ["e1", "mid", "e3"]


def test_channels_and_name_are_kept():
    g = spec_from_dict(module(edge("s", "a"), edge("a", "t"), channels={"a": 64}, name="M"))
    assert g.channels == {"a": 64}
    assert g.name == "M"
    assert g.width("a", 16) == 64
    assert g.width("s", 16) == 16


def test_single_edge_module():
    g = spec_from_dict({"edges": [edge("x", "y", 5)]})
    assert (g.source, g.sink, g.edges) == ("x", "y", (Edge("e1", "x", "y", (5, 5)),))


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("*.json")), ids=lambda p: p.stem)
def test_examples_parse_and_round_trip(path):
    g = load_spec(path)
    again = parse_spec(json.dumps(g.to_spec()))
    assert again.edges == g.edges
    assert (again.source, again.sink, again.channels, again.name) == \
        (g.source, g.sink, g.channels, g.name)
    assert len(list(EXAMPLES.glob("*.json"))) >= 7
