#pragma once
// Private to common: how config and manifest errors name the type of a TOML value they refuse.
#include <toml++/toml.h>

#include <string>

namespace outrider::detail {

inline std::string tomlTypeName(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    default: return "a date/time";
  }
}

}  // namespace outrider::detail
