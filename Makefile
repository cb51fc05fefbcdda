# The two commands: `make demo` runs the main job, `make test` runs the tests. Both set up what they need.
.PHONY: demo test lint bench report clean

demo:
	@scripts/bootstrap.sh serve
	.venv/bin/vigil demo

test:
	@scripts/bootstrap.sh full
	.venv/bin/ruff check .
	.venv/bin/mypy common producers workers model
	scripts/pytest.sh

lint:
	.venv/bin/ruff check . && .venv/bin/mypy common producers workers model

clean:
	rm -rf .venv build *.egg-info .pytest_cache .mypy_cache .ruff_cache
