# The two commands: `make demo` runs the main job, `make test` runs the tests. Both set up what they need.
.PHONY: demo test test-unit lint clean

demo:
	@scripts/bootstrap.sh serve
	.venv/bin/vigil demo

test:
	@scripts/bootstrap.sh full
	.venv/bin/ruff check .
	.venv/bin/mypy $(PACKAGES)
	scripts/pytest.sh

# Tests that need no server: pure units, and fakeredis for code that merely calls Redis.
test-unit:
	@scripts/bootstrap.sh full
	scripts/pytest.sh -m "not integration"

lint:
	.venv/bin/ruff check . && .venv/bin/mypy $(PACKAGES)

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache

PACKAGES = common producers workers model vigil_results vigil_ops vigil_bench
