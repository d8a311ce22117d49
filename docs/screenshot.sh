#!/usr/bin/env bash
# Takes the screenshots in docs/screenshots/ (run.png, run-dark.png, runs.png, compare.png, and
# compare-export.png, the comparison as the server exports it): a real keel
# server on a temporary SQLite file, filled through the HTTP API with runs shaped like real
# ones (3,000 steps × 16 layers, a loss spike, a diverged run), shown in headless Chromium
# driven over WebDriver. The work is the ignored tests `browser::screenshots_of_the_pages`,
# `compare::screenshot_of_the_compare_page` and `export::screenshot_of_the_exported_comparison`.
#
# Needs Debian's chromium, chromium-driver and fonts-dejavu-core.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p keel-server --test api -- --ignored --exact browser::screenshots_of_the_pages
cargo test -p keel-server --test api -- --ignored --exact compare::screenshot_of_the_compare_page
cargo test -p keel-server --test api -- --ignored --exact export::screenshot_of_the_exported_comparison
ls -l docs/screenshots
