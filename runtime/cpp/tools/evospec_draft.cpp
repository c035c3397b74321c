// evospec-draft: drafts from recorded target features, the way a C++ service would call the
// library, and writes each step's draft tree and active set as JSON.
//
//   evospec-draft --bundle BUNDLE --recording DIR --out FILE.json [--vocab POLICY] [--target DIR] [--repeat N]
//                 [--row-updates FILE.safetensors] [--router ROUTER.safetensors]
//
// A recording (``evospec record-drafts``) holds the prompt, the draft settings, and per step the
// target's tapped states of the newly committed positions, the newest token and the draft tokens
// the target accepted. The output lists, per step, the tree and the active set the library
// produced, and the wall time of each step (propose + commit; the best of --repeat replays).
// --row-updates: ``step_<i>_ids`` (int64) and ``step_<i>_rows`` (float32 [n, d]) written into the
// reservoir through Drafter::update_rows before step i's propose (online row updates from C++), and
// ``step_<i>_weight:<name>`` written through Drafter::update_weight (fuse/trunk weights).
// Errors: one line on stderr, "evospec: error: ...", exit code 2 (as the Python CLI).
#include <algorithm>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "../src/json.hpp"
#include "../src/safetensors.hpp"
#include "evospec/drafter.hpp"

namespace {

std::string ints(const std::vector<int64_t>& v) {
  std::string out = "[";
  for (size_t i = 0; i < v.size(); ++i) out += (i ? "," : "") + std::to_string(v[i]);
  return out + "]";
}

std::vector<int64_t> read_ints(const evospec::json::Value& v) {
  std::vector<int64_t> out;
  for (const auto& x : v.array) out.push_back(x.as_int());
  return out;
}

struct Step {
  at::Tensor features;  // [T, 3*Dt] float32
  int64_t newest = 0;
  std::vector<int64_t> accepted;
};

int run(int argc, char** argv) {
  std::map<std::string, std::string> args{{"--repeat", "1"}};
  for (int i = 1; i + 1 < argc; i += 2) args[argv[i]] = argv[i + 1];
  if (argc % 2 == 0 || !args.count("--bundle") || !args.count("--recording") || !args.count("--out")) {
    std::cerr << "usage: evospec-draft --bundle BUNDLE --recording DIR --out FILE.json [--vocab POLICY] "
                 "[--target DIR] [--repeat N] [--row-updates FILE.safetensors] [--router FILE]\n";
    return 2;
  }
  std::string dir = args["--recording"];
  evospec::json::Value rec = evospec::json::parse_file(dir + "/recording.json");
  auto features = evospec::load_safetensors(dir + "/features.safetensors");
  std::vector<Step> steps;
  for (size_t i = 0; i < rec.at("steps").array.size(); ++i) {
    const auto& s = rec.at("steps").at(i);
    steps.push_back({features.at("step_" + std::to_string(i)).to(at::kFloat).contiguous(), s.at("newest").as_int(),
                     read_ints(s.at("accepted"))});
  }
  const auto& ds = rec.at("settings");
  evospec::DraftSettings settings{static_cast<int>(ds.at("depth").as_int()), static_cast<int>(ds.at("width").as_int()),
                                  static_cast<int>(ds.at("budget").as_int())};
  if (ds.has("siblings")) settings.siblings = static_cast<int>(ds.at("siblings").as_int());  // older recordings: 0
  if (ds.has("sibling_ratio")) settings.sibling_ratio = ds.at("sibling_ratio").as_double();  // ... and every sibling
  evospec::DrafterOptions options;
  options.vocab = args.count("--vocab") ? args["--vocab"] : rec.at("vocab").is_null() ? "" : rec.at("vocab").as_string();
  options.target_dir = args.count("--target") ? args["--target"] : "";
  options.router = args.count("--router") ? args["--router"]
                   : rec.has("router") && !rec.at("router").is_null() ? rec.at("router").as_string() : "";
  evospec::Drafter drafter(args["--bundle"], options);

  std::map<std::string, at::Tensor> updates;
  if (args.count("--row-updates")) updates = evospec::load_safetensors(args["--row-updates"]);

  std::vector<int64_t> prompt = read_ints(rec.at("prompt"));
  int repeat = std::max(1, std::stoi(args["--repeat"]));
  std::vector<double> best(steps.size(), 1e300);
  std::vector<std::string> lines(steps.size());
  for (int r = 0; r < repeat; ++r) {
    drafter.start(prompt, /*greedy=*/true);  // recordings are greedy (``evospec record-drafts``)
    for (size_t i = 0; i < steps.size(); ++i) {
      std::string weight_prefix = "step_" + std::to_string(i) + "_weight:";
      for (const auto& [key, value] : updates)
        if (key.rfind(weight_prefix, 0) == 0) {
          at::Tensor w = value.to(at::kFloat).contiguous();
          drafter.update_weight(key.substr(weight_prefix.size()), w.data_ptr<float>(), static_cast<size_t>(w.numel()));
        }
      auto ids = updates.find("step_" + std::to_string(i) + "_ids");
      if (ids != updates.end()) {
        at::Tensor id_list = ids->second.to(at::kLong).contiguous();
        at::Tensor rows = updates.at("step_" + std::to_string(i) + "_rows").to(at::kFloat).contiguous();
        drafter.update_rows(std::vector<int64_t>(id_list.data_ptr<int64_t>(), id_list.data_ptr<int64_t>() + id_list.numel()),
                            rows.data_ptr<float>());
      }
      auto t0 = std::chrono::steady_clock::now();
      evospec::DraftTree tree = drafter.propose(steps[i].features.data_ptr<float>(), steps[i].features.size(0),
                                                steps[i].newest, settings);
      if (i + 1 < steps.size()) drafter.commit(steps[i].accepted);
      double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      best[i] = std::min(best[i], ms);
      if (r == 0)
        lines[i] = "{\"tokens\":" + ints(tree.tokens) + ",\"parents\":" + ints(tree.parents) + ",\"depths\":" +
                   ints(tree.depths) + ",\"active\":" + ints(drafter.active_ids()) + ",\"moved\":" +
                   std::to_string(drafter.moved_rows()) + "}";
    }
  }
  std::ofstream out(args["--out"]);
  out << "{\"policy\":" << evospec::json::quote(drafter.info().policy) << ",\"repeat\":" << repeat << ",\"step_ms\":[";
  for (size_t i = 0; i < best.size(); ++i) out << (i ? "," : "") << best[i];
  out << "],\"steps\":[\n";
  for (size_t i = 0; i < lines.size(); ++i) out << lines[i] << (i + 1 < lines.size() ? ",\n" : "\n");
  out << "]}\n";
  if (!out) throw std::runtime_error("cannot write " + args["--out"]);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {  // BundleError, SettingsError, unreadable recordings
    std::cerr << "evospec: error: " << e.what() << "\n";
    return 2;
  }
}
