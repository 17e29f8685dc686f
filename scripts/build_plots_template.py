"""Build infra/plots/offline.html: DVC's plots page with vega, vega-lite and vega-embed inlined.

    python scripts/build_plots_template.py            # fetches the packages with `npm pack`

`dvc plots show` then renders with no network (.dvc/config points plots.html_template
here). The versions are the ones dvc-render itself loads from a CDN, so the specs it
writes are the ones these builds understand. The file is committed; rebuild it only to
change versions.
"""

from __future__ import annotations

import subprocess
import tarfile
import tempfile
from pathlib import Path

PACKAGES = {  # package@version -> file inside the npm tarball
    "vega@5.20.2": "package/build/vega.min.js",
    "vega-lite@5.2.0": "package/build/vega-lite.min.js",
    "vega-embed@6.18.2": "package/build/vega-embed.min.js",
}
OUT = Path(__file__).resolve().parents[1] / "infra" / "plots" / "offline.html"

PAGE = """<!DOCTYPE html>
<html>
<head>
    {refresh_tag}
    <meta charset="utf-8">
    <title>ice-pipeline plots</title>
    <!-- {versions}: inlined from the npm registry by scripts/build_plots_template.py; no network needed -->
{inline}
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
"""


def main() -> None:
    scripts = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec, member in PACKAGES.items():
            out = subprocess.run(["npm", "pack", spec, "--silent"], cwd=tmp, check=True, capture_output=True, text=True)
            tgz = Path(tmp) / out.stdout.strip().splitlines()[-1]
            with tarfile.open(tgz) as tf:
                f = tf.extractfile(member)
                assert f is not None, f"{member} not in {tgz.name}"
                js = f.read().decode("utf-8")
            js = js.replace("</script", "<\\/script")  # never close the tag early
            scripts.append(f'    <script type="text/javascript">/* {spec} */\n{js}\n    </script>')
    page = PAGE.replace("{{", "{").replace("}}", "}")  # the CSS braces, before any JS goes in
    page = page.replace("{versions}", ", ".join(PACKAGES)).replace("{inline}", "\n".join(scripts))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(page)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
