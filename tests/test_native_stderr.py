"""Descriptor 2 borrowed by a decoding thread (to read libjpeg's warnings) never swallows a line the
program prints meanwhile: `screen --fields` lost "rejected FIELD: ..." lines at random while its
segmenting thread decoded the next field."""

from __future__ import annotations

import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import os, threading, time
    import click
    from edgekit.device.native_stderr import serialise_python_stderr

    serialise_python_stderr()  # as the `edgekit` script does first
    from edgekit.device.decoding import captured_native_stderr
    from edgekit.device.backends import _quiet_native_info

    stop = threading.Event()

    def decoding():
        while not stop.is_set():
            with captured_native_stderr() as err:
                os.write(2, b"libjpeg: noise\\n")  # what a decoder writes: captured, not shown
                time.sleep(0.002)
            assert b"libjpeg: noise" in err.getvalue()

    def loading():  # the model loaded while a field is decoded
        while not stop.is_set():
            with _quiet_native_info():
                os.write(2, b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\\n")
                time.sleep(0.001)

    workers = [threading.Thread(target=decoding), threading.Thread(target=loading)]
    for w in workers:
        w.start()
    for i in range(300):
        click.echo(f"line {i}", err=True)
        time.sleep(0.0002)
    stop.set()
    for w in workers:
        w.join()
    click.echo("end", err=True)
""")


def test_lines_printed_while_another_thread_borrows_stderr_all_arrive():
    res = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    lines = res.stderr.splitlines()
    assert [ln for ln in lines if ln.startswith("line ")] == [f"line {i}" for i in range(300)]
    assert lines[-1] == "end"
    assert not any("libjpeg" in ln or "XNNPACK" in ln for ln in lines)


def test_the_edgekit_script_serialises_stderr_before_the_cli_runs():
    code = ("import sys\nfrom edgekit import entry\nsys.argv = ['edgekit', '--help']\n"
            "try:\n    entry.main()\nexcept SystemExit:\n    pass\nprint(type(sys.stderr).__name__)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.splitlines()[-1] == "_SerialisedStream", res.stderr[-2000:]
