"""No code path deserialises untrusted data with a loader that can run code.

Models, calibration sets and ``lfw.bin`` files come from users' volumes. A pickle, a YAML file
read with the full loader, ``numpy.load(allow_pickle=True)`` or ``torch.load`` can run whatever the
file names; so can ``eval``/``exec`` of text and a shell command line. The scan reads every Python
file of the shipped code (``operator/``, ``scripts/``, ``benchmarks/``) as a syntax tree, resolves
import aliases (``import numpy as np``, ``from pickle import loads``), and fails on any such call.
The one allowed unpickler is ``qfleet.lfw.dataset.RestrictedUnpickler``, which refuses every
global (``tests/unit/lfw/test_dataset.py::test_malicious_pickle_is_refused_and_not_executed``).
"""

from __future__ import annotations

import ast
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.paths import REPO

SCANNED = ("operator", "scripts", "benchmarks")
#: The restricted unpickler: a subclass of pickle.Unpickler whose find_class refuses globals.
ALLOWED_UNPICKLER = ("operator/qfleet/lfw/dataset.py", "RestrictedUnpickler")

#: Calls that run code named by their input, whatever the arguments.
ALWAYS_UNSAFE = {
    "pickle.load": "unrestricted unpickling",
    "pickle.loads": "unrestricted unpickling",
    "pickle.Unpickler": "unrestricted unpickling",
    "_pickle.load": "unrestricted unpickling",
    "_pickle.loads": "unrestricted unpickling",
    "_pickle.Unpickler": "unrestricted unpickling",
    "cPickle.load": "unrestricted unpickling",
    "cPickle.loads": "unrestricted unpickling",
    "dill.load": "unrestricted unpickling",
    "dill.loads": "unrestricted unpickling",
    "cloudpickle.load": "unrestricted unpickling",
    "cloudpickle.loads": "unrestricted unpickling",
    "joblib.load": "unrestricted unpickling",
    "pandas.read_pickle": "unrestricted unpickling",
    "shelve.open": "unrestricted unpickling",
    "marshal.load": "code objects from data",
    "marshal.loads": "code objects from data",
    "yaml.unsafe_load": "YAML that can build any object",
    "yaml.unsafe_load_all": "YAML that can build any object",
    "yaml.full_load": "YAML that can build Python objects",
    "yaml.full_load_all": "YAML that can build Python objects",
    "eval": "evaluating text as code",
    "exec": "executing text as code",
    "builtins.eval": "evaluating text as code",
    "builtins.exec": "executing text as code",
    "os.system": "a shell command line",
    "os.popen": "a shell command line",
}
SAFE_YAML_LOADERS = {"SafeLoader", "CSafeLoader", "BaseLoader", "CBaseLoader"}
SHELL_CALLS = {"subprocess.run", "subprocess.Popen", "subprocess.call", "subprocess.check_call",
               "subprocess.check_output", "asyncio.create_subprocess_shell"}  # fmt: skip


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    call: str
    why: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.call} ({self.why})"


class _Scanner(ast.NodeVisitor):
    def __init__(self, path: str) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self._classes: list[str] = []

    # -- names ---------------------------------------------------------------------------------

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:  # import a.b as c: c is a.b
                self.aliases[alias.asname] = alias.name
            else:  # import a.b: binds a
                head = alias.name.split(".")[0]
                self.aliases[head] = head

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name] = (
                f"{node.module}.{alias.name}" if node.module else alias.name
            )

    def dotted(self, node: ast.AST) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id, node.id)
        if isinstance(node, ast.Attribute):
            base = self.dotted(node.value)
            return f"{base}.{node.attr}" if base else None
        return None

    # -- findings ------------------------------------------------------------------------------

    def flag(self, node: ast.AST, call: str, why: str) -> None:
        self.findings.append(Finding(self.path, getattr(node, "lineno", 0), call, why))

    def visit_ClassDef(self, node: ast.ClassDef) -> None:
        for base in node.bases:
            name = self.dotted(base)
            if (
                name in ("pickle.Unpickler", "_pickle.Unpickler")
                and (self.path, node.name) != ALLOWED_UNPICKLER
            ):
                self.flag(node, f"class {node.name}({name})", "an unpickler other than the restricted one")
        self._classes.append(node.name)
        self.generic_visit(node)
        self._classes.pop()

    def visit_Call(self, node: ast.Call) -> None:
        name = self.dotted(node.func)
        keywords = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        if name in ALWAYS_UNSAFE:
            self.flag(node, name, ALWAYS_UNSAFE[name])
        elif name in ("yaml.load", "yaml.load_all"):
            loader = keywords.get("Loader", node.args[1] if len(node.args) > 1 else None)
            loader_name = (self.dotted(loader) or "").rsplit(".", 1)[-1] if loader is not None else None
            if loader_name not in SAFE_YAML_LOADERS:
                self.flag(node, name, f"YAML loaded with {loader_name or 'no'} Loader, not SafeLoader")
        elif name in ("numpy.load",):
            allow = keywords.get("allow_pickle")
            if allow is not None and not (isinstance(allow, ast.Constant) and allow.value is False):
                self.flag(node, name, "allow_pickle")
        elif name == "torch.load":
            weights_only = keywords.get("weights_only")
            if not (isinstance(weights_only, ast.Constant) and weights_only.value is True):
                self.flag(node, name, "torch.load without weights_only=True unpickles")
        elif name in SHELL_CALLS:
            shell = keywords.get("shell")
            refused = shell is not None and not (isinstance(shell, ast.Constant) and not shell.value)
            if name.endswith("_shell") or refused:
                self.flag(node, name, "a shell command line")
        elif (
            isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and self._is_unpickler_instance(node)
        ):
            self.flag(node, "pickle.Unpickler(...).load", "unrestricted unpickling")
        self.generic_visit(node)

    def _is_unpickler_instance(self, node: ast.Call) -> bool:
        """``pickle.Unpickler(f).load()``: the call's receiver is an unpickler built in place."""
        receiver = node.func.value if isinstance(node.func, ast.Attribute) else None
        return isinstance(receiver, ast.Call) and self.dotted(receiver.func) in (
            "pickle.Unpickler",
            "_pickle.Unpickler",
        )


def scan_source(source: str, path: str = "<string>") -> list[Finding]:
    scanner = _Scanner(path)
    scanner.visit(ast.parse(source, filename=path))
    return scanner.findings


def shipped_python_files() -> list[Path]:
    files: list[Path] = []
    for folder in SCANNED:
        files += [p for p in sorted((REPO / folder).rglob("*.py")) if ".egg-info" not in str(p)]
    return files


def test_the_shipped_code_has_no_unsafe_deserialisation_or_eval() -> None:
    files = shipped_python_files()
    assert len(files) > 40, "the scan found too few files to be looking in the right place"
    findings = []
    for path in files:
        findings += scan_source(path.read_text(), str(path.relative_to(REPO)))
    assert not findings, "unsafe calls:\n" + "\n".join(map(str, findings))


@pytest.mark.parametrize(
    ("module", "name"),
    [("os", "system"), ("builtins", "eval"), ("builtins", "getattr"), ("subprocess", "Popen"),
     ("numpy.core.multiarray", "_reconstruct"), ("posix", "system"), ("__builtin__", "exec")],
)  # fmt: skip
def test_the_one_unpickler_refuses_every_global(module: str, name: str) -> None:
    """The allowed exception is what it says: it looks up no global at all (one codec aside)."""
    import io
    import pickle

    from qfleet.lfw.dataset import RestrictedUnpickler

    with pytest.raises(pickle.UnpicklingError, match="not allowed"):
        RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)


def test_the_codec_it_allows_only_turns_latin1_text_into_bytes() -> None:
    import io
    import pickle

    from qfleet.lfw.dataset import RestrictedUnpickler

    encode = RestrictedUnpickler(io.BytesIO(b"")).find_class("_codecs", "encode")
    assert encode("\xff\x00", "latin1") == b"\xff\x00"
    for bad in (("text", "rot13"), (b"bytes", "latin1"), ("text", "utf-16")):
        with pytest.raises(pickle.UnpicklingError):
            encode(*bad)


UNSAFE_SAMPLES = [
    "import pickle\npickle.loads(data)",
    "import pickle as p\np.load(handle)",
    "from pickle import loads\nloads(data)",
    "from pickle import loads as l\nl(data)",
    "import pickle\npickle.Unpickler(handle).load()",
    "import pickle\nclass Mine(pickle.Unpickler):\n    pass",
    "import numpy as np\nnp.load(path, allow_pickle=True)",
    "import numpy\nnumpy.load(path, allow_pickle=flag)",
    "import torch\ntorch.load(path)",
    "import yaml\nyaml.load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.Loader)",
    "import yaml\nyaml.load(text, yaml.FullLoader)",
    "import yaml\nyaml.unsafe_load(text)",
    "eval(expression)",
    "exec(code)",
    "import subprocess\nsubprocess.run(line, shell=True)",
    "import os\nos.system(line)",
    "import joblib\njoblib.load(path)",
]
SAFE_SAMPLES = [
    "import yaml\nyaml.safe_load(text)",
    "import yaml\nyaml.load(text, Loader=yaml.SafeLoader)",
    "import yaml\nyaml.load(text, Loader=yaml.CSafeLoader)",
    "import numpy as np\nnp.load(path)",
    "import numpy as np\nnp.load(path, allow_pickle=False)",
    "import torch\ntorch.load(path, weights_only=True)",
    "import pickle\npickle.dumps(obj)",
    "import json\njson.loads(text)",
    "import subprocess\nsubprocess.run(['qfleet', '--help'], check=True)",
    "model.eval()",
    "import onnx\nonnx.load(path)",
]


@pytest.mark.parametrize("source", UNSAFE_SAMPLES)
def test_the_scanner_catches(source: str) -> None:
    assert scan_source(textwrap.dedent(source)), source


@pytest.mark.parametrize("source", SAFE_SAMPLES)
def test_the_scanner_lets_safe_calls_pass(source: str) -> None:
    assert scan_source(textwrap.dedent(source)) == [], source
