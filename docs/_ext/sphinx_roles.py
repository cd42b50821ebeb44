"""A griffe extension: Sphinx roles in llmri's docstrings become checked mkdocs-autorefs links.

The docstrings cross-reference with Sphinx roles (``:class:`~llmri.frame.Frame```, ``:func:`capture```,
``:mod:`.protocol```), which mkdocstrings does not read. Once the package is loaded, every role in every
docstring is resolved the way Python would resolve the name where the docstring stands: a dotted path
from the package, a name in the object's scope (its members, its imports, its parents'), a leading dot
relative to the enclosing module, or a builtin. A name that resolves becomes an optional autoref (a
link where the target is rendered on some page, code where it is not); a name that does not is
logged as a warning through griffe's logger, which mkdocstrings routes into mkdocs, so
``mkdocs build --strict`` fails on it. Names in other packages (``zarr.storage.LocalStore``) are not
checked: they become plain code.
"""

from __future__ import annotations

import builtins
import html
import importlib.util
import re
from typing import Any

import griffe

# :role:`target`, :role:`~target`, :role:`title <target>`, and the :py:role: spellings
ROLE_RE = re.compile(r":(?:py:)?(?P<role>class|func|meth|attr|mod|data|exc|obj|const):`(?P<body>[^`]+)`")
TITLED_RE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")


class UnresolvedRole(LookupError):
    """A role's target names nothing."""


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles into autorefs and warn on the ones that name nothing."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        for obj in _walk(pkg):
            docstring = obj.docstring
            if docstring is None or ":" not in docstring.value:
                continue
            docstring.value = ROLE_RE.sub(lambda m, obj=obj: _rewrite(m, obj, loader), docstring.value)


def _walk(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)


def _rewrite(match: re.Match[str], obj: griffe.Object, loader: griffe.GriffeLoader) -> str:
    body = match["body"].strip()
    titled = TITLED_RE.match(body)
    target, title = (titled["target"], titled["title"]) if titled else (body, None)
    short = target.startswith("~")
    target = target.lstrip("~").rstrip("()")
    try:
        path = resolve(target, obj, loader, role=match["role"])
    except UnresolvedRole:
        where = f"{obj.relative_filepath}:{obj.lineno}" if obj.lineno else str(obj.relative_filepath)
        griffe.logger.warning(f"{where}: {match[0]} in the docstring of {obj.path} names nothing")
        return f"`{target}`"
    if title is None:
        title = target.rsplit(".", 1)[-1] if short else target.lstrip(".")
    code = f"<code>{html.escape(title)}</code>"
    if path is None:  # another package's name: not checked, not linked
        return code
    return f'<autoref identifier="{html.escape(path)}" optional>{code}</autoref>'


def _resolve_name(name: str, obj: griffe.Object) -> str:
    """Where ``name`` leads from ``obj``: its members, then its enclosing classes' (inherited ones too:
    ``problems`` set in a base's ``__init__``), up to its module's names (its imports included)."""
    scope: griffe.Object | None = obj
    while scope is not None:
        try:
            members = scope.all_members if scope.is_class else scope.members
        except (griffe.AliasResolutionError, griffe.CyclicAliasError):
            members = scope.members
        member = members.get(name)
        if member is not None:
            return member.target_path if member.is_alias else member.path
        if scope.is_module:  # a module does not see its package's names
            break
        scope = scope.parent
    raise UnresolvedRole(name)


def _in_packages(name: str, obj: griffe.Object) -> str:
    """``name`` among the enclosing packages' names, nearest first: ``create_app`` in a docstring of
    ``llmri.viewer.serve`` is ``llmri.viewer.create_app`` (as a reader takes it, and Sphinx's ``~``)."""
    package = obj.module.parent if not obj.module.is_init_module else obj.module
    while package is not None:
        member = package.members.get(name)
        if member is not None:
            return member.target_path if member.is_alias else member.path
        package = package.parent
    raise UnresolvedRole(name)


def resolve(target: str, obj: griffe.Object, loader: griffe.GriffeLoader, role: str = "obj") -> str | None:
    """The path ``target`` names in ``obj``'s docstring; None when it lies outside the loaded packages.

    Raises UnresolvedRole when it names nothing.
    """
    collection = loader.modules_collection
    if target.startswith("."):
        module = obj.module
        base = module.path if module.is_init_module else module.path.rpartition(".")[0]
        level = len(target) - len(target.lstrip("."))
        for _ in range(level - 1):
            base = base.rpartition(".")[0]
        target = f"{base}.{target.lstrip('.')}"
    else:
        first, _, rest = target.partition(".")
        if first not in collection.members:
            try:
                first = _resolve_name(first, obj)
            except UnresolvedRole:
                if (hasattr(builtins, first) and not rest) or (rest and importlib.util.find_spec(first)):
                    return None  # a builtin, or another installed package's name
                first = _in_packages(first, obj)
            target = f"{first}.{rest}" if rest else first
    if target.split(".", 1)[0] not in collection.members:
        return None
    try:
        found = collection[target]
        final = found.final_target if found.is_alias else found  # raises where an alias leads nowhere
    except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError):
        raise UnresolvedRole(target) from None
    name = target.rsplit(".", 1)[-1]
    if role != "mod" and final.is_module and name in final.members:
        # ``:func:`llmri.capture``` names the function the package llmri.capture exports under its own name
        inner = final.members[name]
        if not (inner.is_alias and inner.final_target.is_module) and not inner.is_module:
            return inner.target_path if inner.is_alias else inner.path
    return target
