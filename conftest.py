"""`pytest` runs the tests (tests/); `pytest --benchmark` runs the benchmark suites (benchmarks/) instead."""


def pytest_addoption(parser):
    parser.addoption("--benchmark", action="store_true",
                     help="run the benchmark suites in benchmarks/ (with pytest-benchmark) instead of the tests")


def pytest_configure(config):
    if config.getoption("benchmark") and config.args_source == config.ArgsSource.TESTPATHS:
        config.args[:] = [str(config.rootpath / "benchmarks")]
