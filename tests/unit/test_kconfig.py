"""Kconfig fragments: parsing, merging, applying, verification and the explanations of
dropped options, on small synthetic Kconfig trees (no kernel source needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from xenforge.core.errors import InputError
from xenforge.lib import kconfig as k
from xenforge.lib.kconfig_index import KconfigIndex, explain, parse_expr, render

# -- parsing ---------------------------------------------------------------------------------


def test_parse_fragment_values_and_comments(tmp_path: Path) -> None:
    f = tmp_path / "a.config"
    f.write_text(
        "# a comment\n"
        "\n"
        "CONFIG_A=y\n"
        "CONFIG_B=m\n"
        "# CONFIG_C is not set\n"
        'CONFIG_D="hello \\"world\\""\n'
        "CONFIG_E=0x10\n"
        "CONFIG_F=-3\n"
        "#CONFIG_G=y\n"  # commented out: ignored
        "CONFIG_H=n\n"
    )
    got = {s.name: (s.value, s.line) for s in k.parse_fragment(f, "a.config")}
    assert got == {"A": ("y", 3), "B": ("m", 4), "C": ("n", 5),
                   "D": ('"hello \\"world\\""', 6), "E": ("0x10", 7), "F": ("-3", 8),
                   "H": ("n", 10)}
    assert k.unquote(got["D"][0]) == 'hello "world"'


def test_parse_fragment_reports_every_bad_line_with_file_and_line(tmp_path: Path) -> None:
    f = tmp_path / "bad.config"
    f.write_text("CONFIG_A=y\nXEN=y\nCONFIG_B=yes\nCONFIG_A=m\nCONFIG_S=unquoted text\n")
    with pytest.raises(InputError) as err:
        k.parse_fragment(f, "bad.config")
    msg = err.value.message
    assert "bad.config:2: not a Kconfig setting: 'XEN=y'" in msg
    assert "bad.config:3: bad value 'yes' for CONFIG_B" in msg
    assert "bad.config:4: CONFIG_A=m contradicts line 1 (CONFIG_A=y)" in msg
    assert "bad.config:5: bad value 'unquoted text'" in msg


def test_repeating_the_same_value_in_a_fragment_is_fine() -> None:
    assert [s.value for s in k.parse_text("CONFIG_A=y\nCONFIG_A=y\n", "x")] == ["y"]


def test_read_config_is_lenient() -> None:
    # .config files have comments such as section titles; nothing there is an error
    text = "#\n# General setup\n#\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_S=\"x\"\n"
    assert {s.name: s.value for s in k.parse_text(text, ".config", strict=False)} == {
        "A": "y", "B": "n", "S": '"x"'}


# -- merging and applying --------------------------------------------------------------------


def test_merge_later_fragment_wins_and_overrides_are_reported() -> None:
    base = k.parse_text("CONFIG_A=y\nCONFIG_B=y\n", "base.config")
    dom0 = k.parse_text("CONFIG_B=m\nCONFIG_C=y\nCONFIG_A=y\n", "dom0.config")
    merged, overrides = k.merge([base, dom0])
    assert {n: s.value for n, s in merged.items()} == {"A": "y", "B": "m", "C": "y"}
    assert merged["B"].origin == "dom0.config"
    assert [o.render() for o in overrides] == [
        "dom0.config:1: CONFIG_B=m overrides CONFIG_B=y from base.config:2"]


def test_apply_replaces_existing_lines_and_keeps_the_rest(tmp_path: Path) -> None:
    cfg = tmp_path / ".config"
    cfg.write_text("CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=y\n# comment\n")
    merged, _ = k.merge([k.parse_text("CONFIG_B=y\n# CONFIG_C is not set\nCONFIG_D=\"x\"\n",
                                      "f")])
    k.apply_to_config(cfg, merged)
    lines = cfg.read_text().splitlines()
    assert "CONFIG_A=y" in lines and "# comment" in lines
    assert lines.count("CONFIG_B=y") == 1 and "# CONFIG_B is not set" not in lines
    assert "CONFIG_C=y" not in lines and "# CONFIG_C is not set" in lines
    assert 'CONFIG_D="x"' in lines
    assert k.read_config(cfg) == {"A": "y", "B": "y", "C": "n", "D": '"x"'}


# -- verification ----------------------------------------------------------------------------


@pytest.mark.parametrize(("wanted", "actual", "ok"), [
    ("y", "y", True), ("y", "m", False), ("y", None, False), ("m", "m", True),
    ("m", "y", False), ("n", None, True), ("n", "n", True), ("n", "y", False),
    ('"a b"', '"a b"', True), ('"a"', '"b"', False), ('""', None, False),
    ("0x10", "16", True), ("0x10", "0x11", False), ("12", "12", True),
])
def test_values_match(wanted: str, actual: str | None, ok: bool) -> None:
    assert k.values_match(wanted, actual) is ok


def test_verify_lists_dropped_and_changed_options() -> None:
    merged, _ = k.merge([k.parse_text("CONFIG_A=y\nCONFIG_B=y\n# CONFIG_C is not set\n"
                                      "CONFIG_D=y\n", "f.config")])
    problems = k.verify(merged, {"A": "y", "B": "m", "C": "y"})
    assert [(p.setting.name, p.actual, p.dropped) for p in problems] == [
        ("B", "m", False), ("C", "y", False), ("D", None, True)]
    assert problems[2].summary() == "f.config:4: CONFIG_D=y was dropped by Kconfig"
    assert problems[0].summary() == "f.config:2: CONFIG_B=y became CONFIG_B=m"


# -- expressions -----------------------------------------------------------------------------


def test_expression_round_trip_keeps_precedence() -> None:
    e = parse_expr("A && (B || !C) && D != \"x\" || $(cc-option,-fno-pie)")
    assert render(e) == 'A && (B || !C) && D!="x" || $(cc-option,-fno-pie)'


# -- explanations ----------------------------------------------------------------------------

KCONFIG = """
config MODULES
	bool "modules"

config NET
	bool "Networking support"

menu "Xen driver support"
	depends on XEN

config XEN_BACKEND
	bool "Backend driver support"
	depends on XEN_DOM0
	help
		Backend drivers. This help text mentions config FOO and
		depends on BAR, which must not be read as Kconfig.

endmenu

config XEN
	bool "Xen guest support"

config XEN_DOM0
	bool "Xen dom0 support"
	depends on XEN && ACPI

config ACPI
	bool "ACPI"

if NET
config XEN_NETDEV_BACKEND
	tristate "Xen backend network device"
	depends on XEN_BACKEND
endif

config HIDDEN
	bool
	select NET

config FORCER
	bool "a driver that needs HIDDEN"
	select HIDDEN

config EXPERT
	bool "expert"

config TUNABLE
	int "a tunable" if EXPERT
	range 1 10
	default 4

config PAVIRT_ONLY
	bool

choice
	prompt "Allocator"
config SLAB
	bool "SLAB"
config SLUB
	bool "SLUB"
endchoice
"""


def _explain(fragment: str, final: dict[str, str], kconfig_text: str = KCONFIG) -> list[str]:
    index = KconfigIndex.from_text(kconfig_text)
    requested, _ = k.merge([k.parse_text(fragment, "kernel_patches/linux-6.1/dom0.config")])
    return explain(k.verify(requested, final), index, final, requested)


def test_help_text_is_not_read_as_kconfig() -> None:
    index = KconfigIndex.from_text(KCONFIG)
    assert not index.known("FOO")
    d = index.definition("XEN_BACKEND")
    assert d is not None and d.all_depends == ["XEN", "XEN_DOM0"]


def test_dropped_option_names_fragment_option_and_unmet_dependency_chain() -> None:
    final = {"NET": "y", "XEN": "y", "MODULES": "y"}  # XEN_DOM0 and ACPI are off
    [msg] = _explain("CONFIG_XEN_NETDEV_BACKEND=y\n", final)
    assert msg.startswith("kernel_patches/linux-6.1/dom0.config:1: CONFIG_XEN_NETDEV_BACKEND=y "
                          "was dropped by Kconfig (depends on: NET && XEN_BACKEND; unmet: ")
    # the chain down to the root cause: XEN_BACKEND needs XEN_DOM0, which needs ACPI
    assert "XEN_BACKEND (not set; add CONFIG_XEN_BACKEND=y to a fragment; it needs " \
           "XEN_DOM0 (not set; add CONFIG_XEN_DOM0=y to a fragment; it needs ACPI" in msg


def test_dependency_that_is_requested_too_points_at_its_own_entry() -> None:
    final = {"NET": "y", "XEN": "y"}
    msgs = _explain("CONFIG_XEN_BACKEND=y\nCONFIG_XEN_NETDEV_BACKEND=y\n", final)
    assert len(msgs) == 2
    assert "XEN_DOM0 (not set; add CONFIG_XEN_DOM0=y" in msgs[0]
    assert "XEN_BACKEND (not set; requested too, see its own entry)" in msgs[1]


def test_dependency_switched_off_on_purpose_names_the_fragment_line() -> None:
    final = {"NET": "y", "XEN": "y", "XEN_DOM0": "y"}
    [msg] = _explain("# CONFIG_XEN_BACKEND is not set\nCONFIG_XEN_NETDEV_BACKEND=y\n", final)
    assert "unmet: XEN_BACKEND (not set, as kernel_patches/linux-6.1/dom0.config:1 asks)" in msg


def test_menu_dependency_is_inherited() -> None:
    [msg] = _explain("CONFIG_XEN_BACKEND=y\n", {})
    assert "(depends on: XEN && XEN_DOM0; unmet: XEN (not set; " in msg


def test_option_limited_to_module() -> None:
    kc = KCONFIG + "\nconfig PART\n\ttristate \"part\"\n\nconfig USER\n\ttristate \"u\"\n" \
        "\tdepends on PART\n"
    [msg] = _explain("CONFIG_USER=y\n", {"MODULES": "y", "PART": "m", "USER": "m"}, kc)
    assert "CONFIG_USER=y became CONFIG_USER=m" in msg
    assert "limited to m by: PART" in msg


def test_unknown_option_is_called_out() -> None:
    [msg] = _explain("CONFIG_XEN_NETDEV_BAKEND=y\n", {})
    assert "no Kconfig file of this tree defines XEN_NETDEV_BAKEND" in msg


def test_option_without_prompt_names_its_selectors() -> None:
    [msg] = _explain("CONFIG_HIDDEN=y\n", {})
    assert "HIDDEN has no prompt, so a fragment cannot set it" in msg
    assert "selected by: FORCER" in msg


def test_disabled_option_forced_on_by_select() -> None:
    [msg] = _explain("# CONFIG_NET is not set\n", {"NET": "y", "HIDDEN": "y", "FORCER": "y"})
    assert "CONFIG_NET=n became CONFIG_NET=y (forced by select from: HIDDEN=y)" in msg


def test_prompt_condition_is_explained() -> None:
    [msg] = _explain("CONFIG_TUNABLE=8\n", {})
    assert "its prompt is visible only if EXPERT" in msg


def test_out_of_range_value() -> None:
    [msg] = _explain("CONFIG_EXPERT=y\nCONFIG_TUNABLE=20\n", {"EXPERT": "y", "TUNABLE": "4"})
    assert "CONFIG_TUNABLE=20 became CONFIG_TUNABLE=4 (value outside its range: 1 10)" in msg


def test_choice_member_lost_to_another() -> None:
    [msg] = _explain("CONFIG_SLAB=y\n", {"SLUB": "y"})
    assert "member of a choice; SLUB was chosen" in msg


def test_module_request_for_bool_and_without_modules() -> None:
    [a] = _explain("CONFIG_NET=m\n", {"NET": "y", "MODULES": "y"})
    assert "NET is a bool option: ask for =y" in a
    kc = KCONFIG + "\nconfig TRI\n\ttristate \"t\"\n"
    [b] = _explain("CONFIG_TRI=m\n", {"TRI": "y"}, kc)
    assert "modules are disabled: CONFIG_MODULES is not set" in b


def test_load_follows_source_if_and_arch_variables(tmp_path: Path) -> None:
    (tmp_path / "arch" / "x86").mkdir(parents=True)
    (tmp_path / "drivers").mkdir()
    (tmp_path / "Kconfig").write_text(
        'mainmenu "Linux/$(ARCH)"\nsource "arch/$(SRCARCH)/Kconfig"\n'
        "if NET\nsource \"drivers/Kconfig\"\nendif\n"
        "config NET\n\tbool \"net\"\n")
    (tmp_path / "arch" / "x86" / "Kconfig").write_text(
        'config 64BIT\n\tbool "64-bit kernel" if "$(ARCH)" = "x86"\n')
    (tmp_path / "drivers" / "Kconfig").write_text(
        "menuconfig NETDEVICES\n\tbool \"Network devices\"\n"
        "config VIRTIO_NET\n\ttristate \"virtio\"\n\tdepends on NETDEVICES\n")
    index = KconfigIndex.load(tmp_path, env={"SRCARCH": "x86", "ARCH": "x86_64"})
    assert index.skipped == []
    assert index.known("64BIT") and index.known("VIRTIO_NET")
    d = index.definition("VIRTIO_NET")
    assert d is not None and d.file == "drivers/Kconfig" and d.all_depends == ["NET",
                                                                             "NETDEVICES"]
    b = index.definition("64BIT")
    assert b is not None and b.prompts == ['"x86_64" = "x86"']
