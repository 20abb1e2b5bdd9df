// Rotary position embeddings as transformers computes them: the inverse frequencies of the
// "default", "linear", "dynamic" (NTK) and "llama3" rope types, cos/sin tables, rotate_half.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/json.h"

namespace hxq {

struct RopeConfig {
  enum class Type { Default, Linear, Dynamic, Llama3 };
  Type type = Type::Default;
  double theta = 10000.0;
  int64_t dim = 0;                // rotated dimensions (= head_dim)
  int64_t max_position = 0;       // config max_position_embeddings
  double factor = 1.0;            // linear, dynamic, llama3
  double low_freq_factor = 1.0;   // llama3
  double high_freq_factor = 4.0;  // llama3
  int64_t original_max_position = 0;  // llama3

  // Reads rope_theta and the scaling from a transformers config: `rope_parameters` (transformers 5)
  // or `rope_scaling` + top-level `rope_theta` (transformers 4). Types other than the four above
  // fail naming `path` (the config.json) and the type.
  static RopeConfig from_json(const json& cfg, int64_t head_dim, int64_t max_position, const std::string& path);

  // Inverse frequencies [dim/2] for a forward whose largest position + 1 is `seq_len` (only the
  // "dynamic" type depends on it), computed in float32 in the order transformers uses.
  std::vector<float> inv_freq(int64_t seq_len) const;
  std::string type_name() const;
};

// cos/sin [n][dim/2] for positions pos0 .. pos0+n-1 (float32 angle inv_freq * pos, as transformers).
void rope_tables(const std::vector<float>& inv_freq, int64_t pos0, int64_t n, std::vector<float>& cos,
                 std::vector<float>& sin);

// One row of those tables: cos/sin [dim/2] of position pos (the same values as rope_tables' row).
void rope_table_row(const std::vector<float>& inv_freq, int64_t pos, float* cos, float* sin);

// Rotates `heads` consecutive vectors of head_dim = 2*half (HF rotate_half convention: the first
// half pairs with the second) by the table row c/s [half].
void rope_apply(float* x, int64_t heads, int64_t half, const float* c, const float* s);

}  // namespace hxq
