#include "outrider/common/version.hpp"
int main() { return 0; }
