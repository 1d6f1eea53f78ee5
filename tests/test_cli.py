import subprocess
import sys


def test_help_is_quick_because_it_imports_no_torch():
    code = "import sys; sys.argv=['histofuse','--help']\nfrom histofuse.cli import main\ntry:\n main()\nexcept SystemExit: pass\nprint('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip().endswith("NO-TORCH"), done.stdout + done.stderr
    for command in ("run", "recipe", "plugins", "demo-data"):
        assert command in done.stdout


def test_python_dash_m_and_console_script_agree():
    done = subprocess.run([sys.executable, "-m", "histofuse", "plugins"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    assert "synthetic" in done.stdout and "histofuse 0.1.0" in done.stdout


def test_plugin_command_demo_data_writes_a_dataset(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "histofuse", "demo-data", str(tmp_path / "d"), "--patients-per-class", "3",
         "--images-per-magnification", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "24 images of 6 patients" in done.stdout
    assert len(list((tmp_path / "d").rglob("SOB_*.png"))) == 24


def test_bad_cli_option_values_are_rejected_with_usage_exit_code(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "histofuse", "demo-data", str(tmp_path), "--patients-per-class", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 2
    assert "patients-per-class" in done.stderr and "Traceback" not in done.stderr
