"""Every text file the shipped code opens is read and written as UTF-8, whatever the user's locale.

Python's ``open`` without ``encoding`` uses the locale's encoding (e.g. cp1252 on Windows,
ISO-8859-1 under such a Linux locale): a dataset JSON with a category named "café", or a
config path with a non-ASCII folder, would be read wrongly or fail there. Checked statically,
so that it holds on machines whose locale is UTF-8 too.
"""

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = ["panoptic_fpn_ext", "train_net.py"]


def _python_files():
    for entry in SHIPPED:
        path = os.path.join(ROOT, entry)
        if path.endswith(".py"):
            yield path
            continue
        for folder, _, names in os.walk(path):
            yield from (os.path.join(folder, n) for n in sorted(names) if n.endswith(".py"))


def _is_open_call(node: ast.Call) -> bool:
    """``open(...)``, ``io.open(...)`` or ``PathManager.open(...)`` (not ``Image.open``,
    ``os.open`` or ``os.fdopen``, which take no text encoding or a descriptor)."""
    func = node.func
    if isinstance(func, ast.Name):
        return func.id == "open"
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "open"
        and isinstance(func.value, ast.Name)
        and func.value.id in ("io", "PathManager")
    )


def _mode(node: ast.Call):
    """The mode argument as a string; "r" when absent; None when it is not a literal."""
    given = node.args[1] if len(node.args) > 1 else None
    given = next((k.value for k in node.keywords if k.arg == "mode"), given)
    if given is None:
        return "r"
    return given.value if isinstance(given, ast.Constant) else None


def text_opens_without_encoding(path: str):
    """``file:line`` of each text-mode open call in ``path`` that names no encoding."""
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and _is_open_call(node)):
            continue
        mode = _mode(node)
        binary = mode is not None and "b" in mode
        if not binary and not any(k.arg == "encoding" for k in node.keywords):
            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} (mode {mode!r})")
    return found


def test_every_text_open_names_utf8():
    files = list(_python_files())
    assert len(files) > 20  # the package was found
    offenders = [hit for path in files for hit in text_opens_without_encoding(path)]
    assert not offenders, "open() in text mode without encoding=: " + ", ".join(offenders)


def test_the_check_finds_an_open_without_encoding(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "open('a.json')\n"
        "open('b.json', 'rb')\n"
        "open('c.json', 'w', encoding='utf-8')\n"
        "PathManager.open('d.yaml')\n"
        "Image.open('e.png')\n"
    )
    hits = text_opens_without_encoding(str(sample))
    assert [hit.rsplit(":", 1)[1] for hit in hits] == ["1 (mode 'r')", "4 (mode 'r')"]
