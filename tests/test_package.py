import subprocess
import sys

import exporter


def test_public_surface_is_small_and_pinned():
    assert sorted(exporter.__all__) == [
        "ConfigError",
        "ConversionError",
        "DestinationError",
        "ExportOptions",
        "ExporterError",
        "ImageError",
        "LabelsError",
        "Manifest",
        "ModelLoadError",
        "NotCheckedError",
        "ParityError",
        "Preprocessing",
        "Report",
        "UnsafeModelError",
        "__version__",
        "export",
        "predict",
        "validate",
        "xcode",
    ]
    for name in exporter.__all__:
        assert getattr(exporter, name) is not None


def test_import_does_not_pull_heavy_libraries():
    code = "import sys, exporter, exporter.cli; print(any(m in sys.modules for m in ('tensorflow', 'coremltools', 'onnxruntime')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_python_dash_m_and_console_script_show_help():
    out = subprocess.run([sys.executable, "-m", "exporter", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "convert" in out.stdout and "validate" in out.stdout
