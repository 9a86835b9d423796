"""The code's layout: the import graph of the project's modules has no cycle, nothing imports the entry point, and the
tracked files cite no document outside the repository and no path of a developer's machine."""
import ast
import os
import re
import subprocess

from helpers import ROOT


def _tracked(suffixes) -> list[str]:
    out = subprocess.run(['git', 'ls-files', '--cached', '--others', '--exclude-standard'], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [p for p in out.split() if p.endswith(suffixes) and os.path.exists(os.path.join(ROOT, p))]


def _module_name(path: str) -> str:
    name = path[:-3].replace('/', '.')
    return name[:-len('.__init__')] if name.endswith('.__init__') else name


def import_graph() -> dict[str, set[str]]:
    """Every import (module level or inside a function) between the project's modules (tests excluded). Scripts
    import by bare name, with scripts/ on sys.path."""
    files = [p for p in _tracked(('.py',)) if not p.startswith('tests/')]
    names = {_module_name(p): p for p in files}
    script_names = {os.path.basename(p)[:-3]: _module_name(p) for p in files if p.startswith('scripts/')}
    graph = {}
    for name, path in names.items():
        deps = set()
        for node in ast.walk(ast.parse(open(os.path.join(ROOT, path)).read())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module] + [f'{node.module}.{a.name}' for a in node.names]
            for target in targets:
                target = script_names.get(target, target) if path.startswith('scripts/') else target
                if target in names and target != name:
                    deps.add(target)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state = {}

    def visit(node, trail):
        state[node] = 'open'
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 'open':
                return trail[trail.index(dep):] + [dep]
            if dep not in state:
                found = visit(dep, trail + [dep])
                if found:
                    return found
        state[node] = 'done'
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node, [node])
            if found:
                return found
    return None


def test_cycle_finder_finds_a_planted_cycle():
    assert find_cycle({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == ['a', 'b', 'c', 'a']
    assert find_cycle({'a': {'b', 'c'}, 'b': {'c'}, 'c': set()}) is None


def test_import_graph_has_no_cycle_and_nothing_imports_the_entry_point():
    graph = import_graph()
    assert {'dreamer', 'models', 'agents', 'vid2act', 'tools', 'env.driver'} <= set(graph)
    assert 'vid2act' in graph['agents'] and 'models' in graph['vid2act']     # the edges the checker must see
    assert find_cycle(graph) is None, find_cycle(graph)
    assert [name for name, deps in graph.items() if 'dreamer' in deps] == []
    assert not any(dep.startswith('torch') for dep in graph['env.driver'])


def test_no_machine_paths_and_no_documents_outside_the_repository():
    external = re.compile(r'DISWM_SPEC|VID2ACT_SPEC|DISENTANGLEMENT\.md|shared/(docs|reference)|\.\./shared')
    machine = re.compile(r'(?<![\w.])/(work|home|root|Users)/\w|[A-Z]:\\\\Users')
    hits = []
    for path in _tracked(('.py', '.md', '.sh', '.yaml', '.yml', '.txt', '.json', '.cfg', '.ini')):
        if path == 'tests/test_layout.py':
            continue
        for number, line in enumerate(open(os.path.join(ROOT, path), errors='replace'), 1):
            if external.search(line) or machine.search(line):
                hits.append(f'{path}:{number}: {line.strip()[:100]}')
    assert hits == []


def test_same_numbers_compares_logged_values_but_not_clocks():
    import sys
    sys.path.insert(0, os.path.join(ROOT, 'scripts'))
    import same_numbers
    rows = [{'step': 500, 'model_loss': 1.5, 'time_update': 3.0, 'fps': 9.0}, {'step': 1000, 'eval_return': 80.0}]
    clocks_differ = [dict(rows[0], time_update=4.0, fps=2.0), rows[1]]
    assert same_numbers.compare(rows, clocks_differ) == []
    changed = [rows[0], {'step': 1000, 'eval_return': 80.5}]
    assert same_numbers.compare(rows, changed) == ['step 1000: eval_return 80.0 vs 80.5']
    assert same_numbers.compare(rows, rows[:1]) == ['2 rows vs 1']
    cmds = same_numbers.commands('/out', '/videos')
    assert list(cmds) == ['dv2', 'pre', 'diswm']
    assert cmds['diswm'][cmds['diswm'].index('--pretrain_checkpoint_path') + 1] == os.path.join('/out', 'pre')
    assert cmds['pre'][cmds['pre'].index('--pretrain_datasets_path') + 1] == '/videos'
