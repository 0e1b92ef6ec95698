"""azagent serialconsole on sample /etc/default/grub files under temporary roots.

Under --root nothing is ever run: GRUB's configuration is regenerated only
on /, which these tests never touch; the tools the tree holds are empty files
that only decide which command is printed.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_cli, snapshot

from azagent.errors import StageFailed
from azagent.grub import add_kernel_args

ARGS = ["console=ttyS0", "earlyprintk=ttyS0"]

DEBIAN = """\
# If you change this file, run 'update-grub' afterwards to update
# /boot/grub/grub.cfg.
GRUB_DEFAULT=0
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX=""
"""

RHEL = """\
GRUB_TIMEOUT=5
GRUB_DISTRIBUTOR="$(sed 's, release .*$,,g' /etc/system-release)"
GRUB_DEFAULT=saved
GRUB_DISABLE_SUBMENU=true
GRUB_TERMINAL_OUTPUT="console"
GRUB_CMDLINE_LINUX="crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root rhgb quiet"
GRUB_DISABLE_RECOVERY="true"
GRUB_ENABLE_BLSCFG=true
"""


def image(root: Path, grub: str, os_release: str, tools: tuple[str, ...] = ()) -> Path:
    (root / "etc/default").mkdir(parents=True)
    path = root / "etc/default/grub"
    path.write_text(grub)
    path.chmod(0o644)
    (root / "etc/os-release").write_text(os_release)
    (root / "usr/sbin").mkdir(parents=True)
    for tool in tools:
        (root / "usr/sbin" / tool).write_text("")  # only looked at, never run
    return path


def test_debian_image(root: Path) -> None:
    path = image(root, DEBIAN, 'ID=debian\nVERSION_ID="12"\n', ("update-grub",))
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert path.read_text() == DEBIAN.replace(
        'GRUB_CMDLINE_LINUX=""', 'GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"'
    )
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert (
        "add console=ttyS0 earlyprintk=ttyS0 to GRUB_CMDLINE_LINUX in /etc/default/grub"
        in run.stdout
    )
    assert f"chroot {root} update-grub" in run.stdout
    assert "done" in run.stdout

    before = snapshot(root)
    again = run_cli("serialconsole", "--root", str(root))
    assert again.returncode == 0, again.stderr
    assert "nothing to do" in again.stdout
    assert "regenerate" not in again.stdout
    assert snapshot(root) == before


def test_rhel_image_prefers_grubby(root: Path) -> None:
    path = image(
        root, RHEL, 'NAME="Red Hat Enterprise Linux"\nID="rhel"\nID_LIKE="fedora"\n', ("grubby",)
    )
    run = run_cli("-serialconsole", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert (
        'GRUB_CMDLINE_LINUX="crashkernel=auto resume=/dev/mapper/rhel-swap rd.lvm.lv=rhel/root'
        ' rhgb quiet console=ttyS0 earlyprintk=ttyS0"\n' in path.read_text()
    )
    assert path.read_text().count("\n") == RHEL.count("\n")
    assert (
        f"chroot {root} grubby --update-kernel=ALL '--args=console=ttyS0 earlyprintk=ttyS0'"
        in run.stdout
    )


def test_rhel_without_grubby_and_a_debian_without_tools(root: Path, tmp_path: Path) -> None:
    image(root, RHEL, 'ID="centos"\n', ("grub2-mkconfig",))
    run = run_cli("serialconsole", "--root", str(root))
    assert f"chroot {root} grub2-mkconfig -o /boot/grub2/grub.cfg" in run.stdout

    other = tmp_path / "other"
    image(other, DEBIAN, "ID=debian\n")
    run = run_cli("serialconsole", "--root", str(other))
    assert f"chroot {other} grub-mkconfig -o /boot/grub/grub.cfg" in run.stdout


def test_arguments_already_there_with_options(root: Path) -> None:
    grub = (
        'GRUB_CMDLINE_LINUX="console=tty1 console=ttyS0,115200n8 earlyprintk=ttyS0,115200'
        ' rootdelay=300"\n'
    )
    image(root, grub, "ID=ubuntu\nID_LIKE=debian\n", ("update-grub",))
    before = snapshot(root)
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "nothing to do" in run.stdout
    assert snapshot(root) == before


def test_dry_run_changes_nothing(root: Path) -> None:
    image(root, DEBIAN, "ID=debian\n")
    before = snapshot(root)
    run = run_cli("serialconsole", "--root", str(root), "--dry-run")
    assert run.returncode == 0, run.stderr
    assert "(dry run) will:" in run.stdout
    assert "add console=ttyS0 earlyprintk=ttyS0" in run.stdout
    assert snapshot(root) == before


def test_a_stale_generated_configuration_is_reported(root: Path) -> None:
    image(root, 'GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"\n', "ID=debian\n")
    cfg = root / "boot/grub/grub.cfg"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(
        "### BEGIN /etc/grub.d/10_linux ###\n"
        "menuentry 'Debian' {\n\tlinux /vmlinuz-6.1.0 root=UUID=x ro quiet\n}\n"
        "### END /etc/grub.d/10_linux ###\n"
    )
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "must be regenerated" in run.stdout

    # Entries of other systems (os-prober) never get our arguments: not stale.
    cfg.write_text(
        "### BEGIN /etc/grub.d/10_linux ###\n"
        "\tlinux /vmlinuz-6.1.0 root=UUID=x ro console=ttyS0 earlyprintk=ttyS0\n"
        "### END /etc/grub.d/10_linux ###\n"
        "### BEGIN /etc/grub.d/30_os-prober ###\n"
        "\tlinux /other/vmlinuz root=/dev/sdb1\n"
        "### END /etc/grub.d/30_os-prober ###\n"
    )
    run = run_cli("serialconsole", "--root", str(root))
    assert "nothing to do" in run.stdout
    assert "regenerated" not in run.stdout


def test_a_dropin_that_overrides_is_pointed_out(root: Path) -> None:
    image(root, DEBIAN, "ID=ubuntu\n")
    (root / "etc/default/grub.d").mkdir()
    (root / "etc/default/grub.d/50-cloudimg-settings.cfg").write_text(
        'GRUB_CMDLINE_LINUX="quiet"\n'
    )
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 0, run.stderr
    assert "/etc/default/grub.d/50-cloudimg-settings.cfg sets GRUB_CMDLINE_LINUX too" in run.stdout


def test_missing_or_uneditable_defaults_fail_and_change_nothing(root: Path) -> None:
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 1
    assert "/etc/default/grub does not exist" in run.stderr

    image(root, 'GRUB_CMDLINE_LINUX="quiet\n  splash"\n', "ID=debian\n")
    before = snapshot(root)
    run = run_cli("serialconsole", "--root", str(root))
    assert run.returncode == 1
    assert "spans several lines: edit it by hand" in run.stderr
    assert snapshot(root) == before


@pytest.mark.parametrize(
    ("text", "expected", "added"),
    [
        ("", 'GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"\n', ARGS),
        (
            "GRUB_TIMEOUT=5",  # no final newline
            'GRUB_TIMEOUT=5\nGRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"\n',
            ARGS,
        ),
        (
            "GRUB_CMDLINE_LINUX=quiet\n",
            'GRUB_CMDLINE_LINUX="quiet console=ttyS0 earlyprintk=ttyS0"\n',
            ARGS,
        ),
        (
            "GRUB_CMDLINE_LINUX='console=ttyS0'  # serial\n",
            "GRUB_CMDLINE_LINUX='console=ttyS0 earlyprintk=ttyS0'  # serial\n",
            ["earlyprintk=ttyS0"],
        ),
        (
            'export GRUB_CMDLINE_LINUX="a \\"b\\" "\r\n',
            'export GRUB_CMDLINE_LINUX="a \\"b\\" console=ttyS0 earlyprintk=ttyS0"\r\n',
            ARGS,
        ),
        (
            'GRUB_CMDLINE_LINUX="console=ttyS0"\nGRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX x=1"\n',
            'GRUB_CMDLINE_LINUX="console=ttyS0"\n'
            'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX x=1 earlyprintk=ttyS0"\n',
            ["earlyprintk=ttyS0"],
        ),
        (
            'GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"\nGRUB_CMDLINE_LINUX="quiet"\n',
            'GRUB_CMDLINE_LINUX="console=ttyS0 earlyprintk=ttyS0"\n'
            'GRUB_CMDLINE_LINUX="quiet console=ttyS0 earlyprintk=ttyS0"\n',
            ARGS,
        ),
        (
            'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\nGRUB_CMDLINE_LINUX="console=ttyS01"\n',
            'GRUB_CMDLINE_LINUX_DEFAULT="console=ttyS0"\n'
            'GRUB_CMDLINE_LINUX="console=ttyS01 console=ttyS0 earlyprintk=ttyS0"\n',
            ARGS,
        ),
    ],
)
def test_add_kernel_args_shapes(text: str, expected: str, added: list[str]) -> None:
    assert add_kernel_args(text, ARGS) == (expected, added)
    assert add_kernel_args(expected, ARGS) == (expected, [])


def test_add_kernel_args_refuses_what_it_cannot_edit_safely() -> None:
    with pytest.raises(StageFailed, match="too complex"):
        add_kernel_args("GRUB_CMDLINE_LINUX=a\\ b\n", ARGS)
    with pytest.raises(StageFailed, match="spans several lines"):
        add_kernel_args("GRUB_CMDLINE_LINUX='a\nb'\n", ARGS)
