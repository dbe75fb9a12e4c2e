# Test fixtures checked against the real components they start.
outrider_test(test_broker_fixture SOURCES integration/test_broker_fixture.cpp LABELS integration hub TIMEOUT 120)
