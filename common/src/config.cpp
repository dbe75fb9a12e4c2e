#include "outrider/common/config.hpp"

#include "toml_type_name.hpp"

#include <toml++/toml.h>

#include <fstream>

#include <algorithm>
#include <cmath>
#include <sstream>

namespace outrider {

struct ConfigReader::Impl {
  std::string source;
  std::string text;
  toml::table root;
  std::set<std::string, std::less<>> used;

  [[noreturn]] void fail(const toml::source_region& where, std::string_view key, std::string_view what) const {
    std::ostringstream os;
    os << (where.path && !where.path->empty() ? *where.path : source);
    if (where.begin.line) os << ':' << where.begin.line;
    os << ": key '" << key << "': " << what;
    throw ConfigError(os.str());
  }
  [[noreturn]] void failMissing(std::string_view key) const {
    throw ConfigError(source + ": key '" + std::string(key) + "': required but missing");
  }

  const toml::node* find(std::string_view key) {
    used.emplace(key);
    return root.at_path(key).node();
  }
};

namespace {
using detail::tomlTypeName;
}  // namespace

ConfigReader::ConfigReader(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
ConfigReader::ConfigReader(ConfigReader&&) noexcept = default;
ConfigReader& ConfigReader::operator=(ConfigReader&&) noexcept = default;
ConfigReader::~ConfigReader() = default;

ConfigReader ConfigReader::parse(std::string_view text, std::string source) {
  auto impl = std::make_unique<Impl>();
  impl->source = std::move(source);
  impl->text = std::string(text);
  try {
    impl->root = toml::parse(text, impl->source);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << impl->source << ':' << e.source().begin.line << ": " << e.description();
    throw ConfigError(os.str());
  }
  return ConfigReader(std::move(impl));
}

ConfigReader ConfigReader::load(const std::filesystem::path& file) {
  std::ifstream in(file);
  if (!in) throw ConfigError(file.string() + ": cannot open configuration file");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse(ss.str(), file.string());
}

const std::string& ConfigReader::source() const { return impl_->source; }
const std::string& ConfigReader::text() const { return impl_->text; }

namespace {
// Nodes are moved, not copied: toml++ keeps a node's source (file and line) only on a move.
void fillTable(toml::table& upper, toml::table& lower) {
  for (auto&& [k, v] : lower) {
    toml::node* mine = upper.get(k);
    if (!mine) {
      upper.insert(k, std::move(v));
      continue;
    }
    if (mine->is_table() && v.is_table()) fillTable(*mine->as_table(), *v.as_table());
  }
}
}  // namespace

void ConfigReader::fillFrom(ConfigReader&& lower) { fillTable(impl_->root, lower.impl_->root); }

void ConfigReader::claim(std::string_view key) { impl_->used.insert(std::string(key)); }

bool ConfigReader::has(std::string_view key) const { return bool(impl_->root.at_path(key).node()); }

std::string ConfigReader::str(std::string_view key, std::string def) {
  const toml::node* n = impl_->find(key);
  if (!n) return def;
  if (auto v = n->value_exact<std::string>()) return *v;
  impl_->fail(n->source(), key, "expected a string, found " + tomlTypeName(*n));
}

std::string ConfigReader::requireStr(std::string_view key) {
  if (!has(key)) impl_->failMissing(key);
  auto v = str(key, {});
  if (v.empty()) impl_->fail(impl_->root.at_path(key).node()->source(), key, "must not be empty");
  return v;
}

std::int64_t ConfigReader::integer(std::string_view key, std::int64_t def, std::int64_t min, std::int64_t max) {
  const toml::node* n = impl_->find(key);
  if (!n) return def;
  auto v = n->value_exact<std::int64_t>();
  if (!v) impl_->fail(n->source(), key, "expected an integer, found " + tomlTypeName(*n));
  if (*v < min || *v > max)
    impl_->fail(n->source(), key,
                "value " + std::to_string(*v) + " out of range [" + std::to_string(min) + ", " + std::to_string(max) + "]");
  return *v;
}

double ConfigReader::number(std::string_view key, double def, double min, double max) {
  const toml::node* n = impl_->find(key);
  if (!n) return def;
  std::optional<double> v;
  if (auto d = n->value_exact<double>()) v = *d;
  else if (auto i = n->value_exact<std::int64_t>()) v = static_cast<double>(*i);
  if (!v) impl_->fail(n->source(), key, "expected a number, found " + tomlTypeName(*n));
  if (!std::isfinite(*v) || *v < min || *v > max) {
    std::ostringstream os;
    os << "value " << *v << " out of range [" << min << ", " << max << "]";
    impl_->fail(n->source(), key, os.str());
  }
  return *v;
}

bool ConfigReader::boolean(std::string_view key, bool def) {
  const toml::node* n = impl_->find(key);
  if (!n) return def;
  if (auto v = n->value_exact<bool>()) return *v;
  impl_->fail(n->source(), key, "expected a boolean, found " + tomlTypeName(*n));
}

std::vector<std::string> ConfigReader::strList(std::string_view key, std::vector<std::string> def) {
  const toml::node* n = impl_->find(key);
  if (!n) return def;
  const toml::array* arr = n->as_array();
  if (!arr) impl_->fail(n->source(), key, "expected an array of strings, found " + tomlTypeName(*n));
  std::vector<std::string> out;
  for (const auto& el : *arr) {
    auto v = el.value_exact<std::string>();
    if (!v) impl_->fail(el.source(), key, "expected an array of strings, found an element that is " + tomlTypeName(el));
    out.push_back(*v);
  }
  return out;
}

void ConfigReader::fail(std::string_view key, std::string_view message) const {
  const toml::node* n = impl_->root.at_path(key).node();
  impl_->fail(n ? n->source() : toml::source_region{}, key, message);
}

void ConfigReader::finish() {
  struct Unknown {
    std::string key;
    toml::source_region where;
  };
  std::vector<Unknown> unknown;
  auto isUsedOrParent = [&](const std::string& path) {
    if (impl_->used.count(path)) return true;
    auto it = impl_->used.lower_bound(path + ".");
    return it != impl_->used.end() && it->rfind(path + ".", 0) == 0;
  };
  auto walk = [&](auto& self, const toml::table& t, const std::string& prefix) -> void {
    for (const auto& [k, v] : t) {
      std::string path = prefix.empty() ? std::string(k.str()) : prefix + "." + std::string(k.str());
      if (impl_->used.count(path)) continue;  // a known leaf (arrays and values checked by their getter)
      if (const toml::table* sub = v.as_table(); sub && isUsedOrParent(path)) {
        self(self, *sub, path);
        continue;
      }
      unknown.push_back({path, k.source().begin.line ? k.source() : v.source()});
    }
  };
  walk(walk, impl_->root, "");
  if (unknown.empty()) return;
  auto first = std::min_element(unknown.begin(), unknown.end(), [](const Unknown& a, const Unknown& b) {
    return a.where.begin.line < b.where.begin.line;
  });
  impl_->fail(first->where, first->key, "unknown key (misspelt, or not valid in this section)");
}

}  // namespace outrider
