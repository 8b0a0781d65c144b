"""What a stage of one of our Dockerfiles puts in its image, read from the Dockerfile text: the
ENV, LABELs (ARG defaults substituted, as a build without --build-arg gets them), ENTRYPOINT,
CMD, WORKDIR and the files COPY'd from the build context, following `FROM
<stage>` to the base stages. Enough to run the image's process outside a container
(tests/deploy/test_render_run.py) and to check what the image sets (test_docker.py). Exec-form
ENTRYPOINT/CMD and `key=value` ENV only (what our Dockerfiles use; others raise).
"""
import json
import re
import shlex
from dataclasses import dataclass, field


def stages(dockerfile):
    """{stage name: its lines}; the unnamed last stage is "final"."""
    out, name = {}, None
    for line in dockerfile.read_text().splitlines():
        match = re.match(r"FROM\s+\S+(?:\s+AS\s+(\S+))?", line)
        if match:
            name = match.group(1) or "final"
            out[name] = []
        elif name:
            out[name].append(line)
    return out


def logical_lines(lines):
    """Dockerfile lines with backslash continuations joined, comments dropped."""
    out, current = [], ""
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        out.append(current + line)
        current = ""
    return out


def base_chain(dockerfile, stage):
    """[stage, its base stage, ...] up to the first stage built FROM an image."""
    text = dockerfile.read_text()
    named = stages(dockerfile)
    chain, name = [], stage
    while name:
        chain.append(name)
        if name == "final":
            base = list(re.finditer(r"^FROM\s+(\S+)$", text, re.M))[-1].group(1)
        else:
            base = re.search(rf"^FROM\s+(\S+)\s+AS\s+{re.escape(name)}$", text, re.M).group(1)
        name = base if base in named else None
    return chain


@dataclass
class Image:
    env: dict = field(default_factory=dict)
    entrypoint: list = field(default_factory=list)
    cmd: list = field(default_factory=list)
    workdir: str = "/"
    copies: list = field(default_factory=list)  # (source in the build context, destination)
    labels: dict = field(default_factory=dict)


def global_args(dockerfile):
    """{name: default} of the ARGs before the first FROM."""
    out = {}
    for line in logical_lines(dockerfile.read_text().split("\n")):
        if line.startswith("FROM"):
            break
        match = re.match(r"ARG\s+(\w+)(?:=(.*))?$", line.strip())
        if match:
            out[match.group(1)] = match.group(2) or ""
    return out


def image_config(dockerfile, stage="final"):
    image = Image()
    named = stages(dockerfile)
    defaults = global_args(dockerfile)
    for name in reversed(base_chain(dockerfile, stage)):
        args = {}  # a stage sees a global ARG only when it declares it again
        for line in logical_lines(named[name]):
            instruction, _, rest = line.strip().partition(" ")
            rest = rest.strip()
            if instruction == "ARG":
                key, eq, value = rest.partition("=")
                args[key] = shlex.split(value)[0] if eq and value else defaults.get(key, "")
            elif instruction == "LABEL":
                for item in shlex.split(rest):
                    key, eq, value = item.partition("=")
                    if not eq:
                        raise ValueError(f"{dockerfile.name}: LABEL without '=': {line}")
                    image.labels[key] = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), ""), value)
            elif instruction == "ENV":
                for item in shlex.split(rest):
                    key, eq, value = item.partition("=")
                    if not eq:
                        raise ValueError(f"{dockerfile.name}: ENV without '=': {line}")
                    image.env[key] = value
            elif instruction in ("ENTRYPOINT", "CMD"):
                value = json.loads(rest)  # exec form only
                if instruction == "ENTRYPOINT":
                    image.entrypoint, image.cmd = value, []  # a new ENTRYPOINT resets CMD
                else:
                    image.cmd = value
            elif instruction == "WORKDIR":
                image.workdir = rest
            elif instruction == "COPY" and "--from=" not in rest:
                parts = [p for p in shlex.split(rest) if not p.startswith("--")]
                image.copies += [(source, parts[-1]) for source in parts[:-1]]
    return image


def image_env(dockerfile, stage):
    return image_config(dockerfile, stage).env
