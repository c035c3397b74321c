/* A C ABI over evospec::Drafter (drafter.hpp), for services in other languages and for Python's
 * ctypes (runtime/native_drafter.py: the decoding loop drafting through this library).
 *
 * Every call returns a status: EVOSPEC_OK, or an error kind whose one-line message
 * evospec_last_error() returns (per thread, valid until the thread's next failing call). No C++
 * exception crosses this boundary. Buffers are the caller's; a propose() whose tree does not fit
 * ``capacity`` fails with EVOSPEC_SETTINGS_ERROR and says how many nodes it needed.
 */
#ifndef EVOSPEC_DRAFTER_C_H
#define EVOSPEC_DRAFTER_C_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

enum { EVOSPEC_OK = 0, EVOSPEC_BUNDLE_ERROR = 1, EVOSPEC_SETTINGS_ERROR = 2, EVOSPEC_INTERNAL_ERROR = 3 };

typedef struct evospec_drafter evospec_drafter;

/* Strings may be NULL or "" (the default). threads: 0 = libtorch's choice. check_files: 0 or 1. */
int evospec_drafter_open(const char* bundle, const char* vocab, const char* frequencies, const char* router,
                         const char* target_dir, int threads, int64_t max_context, int check_files,
                         evospec_drafter** out);
void evospec_drafter_close(evospec_drafter* drafter);
const char* evospec_last_error(void);

int evospec_drafter_start(evospec_drafter* drafter, const int64_t* prompt, int64_t count);
/* start, saying whether the caller verifies this sequence greedily (greedy = 1: temperature 0) or samples
 * (0, as evospec_drafter_start): an evospec:K policy opened with a router fills greedy sequences from the
 * router's clusters. */
int evospec_drafter_start_greedy(evospec_drafter* drafter, const int64_t* prompt, int64_t count, int greedy);
/* features: [positions, 3 * target_hidden_size] float32, row-major. Writes *nodes nodes. */
int evospec_drafter_propose(evospec_drafter* drafter, const float* features, int64_t positions, int64_t newest_token,
                            int depth, int width, int budget, int64_t* tokens, int64_t* parents, int64_t* depths,
                            int64_t capacity, int64_t* nodes);
/* What one step costs in ms, for a value-based budget (evospec::StepCosts; Python's StepCosts). rates:
 * rate_count (= EVOSPEC_EDGE_BINS + 1, or twice that: first choices, then other children) acceptance rates
 * per bin of the drafter's edge probability, or NULL
 * (rate_count 0): the drafter's probability as it is. spine: levels of the first-choice path drafted and kept
 * whatever they are worth (0: none; the chain's depth: the tree holds the chain). */
enum { EVOSPEC_EDGE_BINS = 11 };
typedef struct evospec_step_costs {
  double fixed_ms, level_ms, row_ms, level_row_ms;
  const double* rates;
  int64_t rate_count;
  int64_t spine;
} evospec_step_costs;
/* propose, with a value-based budget when costs != NULL (budget is then the most nodes kept), and more out:
 * scores (NULL or capacity doubles): each node's cumulative draft log-probability; level_rows (NULL or at least
 * depth entries) and *levels: frontier rows of each drafter call past the root call; timings (NULL or 2
 * doubles): ms of the root call and of drafting past it. */
int evospec_drafter_propose_costed(evospec_drafter* drafter, const float* features, int64_t positions,
                                   int64_t newest_token, int depth, int width, int budget,
                                   const evospec_step_costs* costs, int64_t* tokens, int64_t* parents,
                                   int64_t* depths, double* scores, int64_t capacity, int64_t* nodes,
                                   int64_t* level_rows, int64_t* levels, double* timings);
/* Greedy chains proposed from now on (width 1, through propose or propose_costed) also hold the drafter's second
 * choice at each of their first ``siblings`` levels, as leaves after the chain's nodes (DraftSettings::siblings;
 * 0, the default: the plain chain). A propose with width > 1, or deeper siblings than depth, then fails. */
int evospec_drafter_set_siblings(evospec_drafter* drafter, int siblings);
/* Of those siblings, keep only the levels whose first choice is less than ``ratio`` times as likely as the second
 * (DraftSettings::sibling_ratio; 0, the default: every level's). Fails unless ratio is 0 or > 1. */
int evospec_drafter_set_sibling_ratio(evospec_drafter* drafter, double ratio);
/* A sampled chain of ``depth`` (DraftSettings::temperature; temperature > 0): uniforms holds depth numbers in [0, 1)
 * from the caller's generator, one a level. Writes the nodes as propose() does, scores (NULL or capacity doubles),
 * and each node's law over the head's columns into laws (row-major [nodes, *law_columns], at most law_capacity
 * doubles); the first evospec_drafter_active() columns are the active ids, any after them padding (q = 0). */
int evospec_drafter_propose_sampled(evospec_drafter* drafter, const float* features, int64_t positions,
                                    int64_t newest_token, int depth, double temperature, const double* uniforms,
                                    int64_t* tokens, int64_t* parents, int64_t* depths, double* scores, double* laws,
                                    int64_t law_capacity, int64_t* law_columns, int64_t capacity, int64_t* nodes,
                                    double* timings);
int evospec_drafter_commit(evospec_drafter* drafter, const int64_t* accepted, int64_t count);
/* The active set's size and the rows moved at the last propose; ids written when ids != NULL
 * (at most capacity of them). */
int evospec_drafter_active(evospec_drafter* drafter, int64_t* ids, int64_t capacity, int64_t* size, int64_t* moved);
/* ms the last propose spent in the vocabulary policy (ms[0]: observing, choosing the active set) and in moving the
 * set's rows into the head (ms[1]), both inside its own time. */
int evospec_drafter_policy_ms(evospec_drafter* drafter, double* ms);
/* hidden_size, target_hidden_size, vocab_size */
int evospec_drafter_sizes(evospec_drafter* drafter, int64_t* sizes);

/* Speculative sampling verification of one step, without a drafter: the target's law at each visited row
 * (temperature, softmax, top-p nucleus) and recursive rejection of each node's children in draft order.
 * logits: rows x vocab float32, token v of row r at logits[r * row_stride + v * vocab_stride] (row 0: the root,
 * i + 1: node i; rows = nodes + 1). tokens, parents: [nodes] (parent -1: a child of the root; parents come first).
 * laws: [nodes, law_columns] each node's drafter law, or NULL: every node a point mass (a deterministic child);
 * columns: [law_columns] the target id of each law column, or NULL when the columns are the vocabulary.
 * uniforms: uniform_count numbers in [0, 1) (nodes + 1 always suffice): one per tested child and one for the
 * bonus token. Writes the accepted nodes (at most nodes of them) to accepted, their count, the bonus token and
 * how many uniforms the step used. */
int evospec_verify_sampled(const float* logits, int64_t rows, int64_t vocab, int64_t row_stride, int64_t vocab_stride,
                           const int64_t* tokens, const int64_t* parents, int64_t nodes, const double* laws,
                           const int64_t* columns, int64_t law_columns, double temperature, double top_p,
                           const double* uniforms, int64_t uniform_count, int64_t* accepted, int64_t* accepted_count,
                           int64_t* bonus, int64_t* uniforms_used);
/* The law evospec_verify_sampled computes at one row (token v at logits[v * stride]): the top-p nucleus's
 * softmax probabilities into weights [vocab] (removed tokens 0) and their float64 sum into *total. */
int evospec_sampling_weights(const float* logits, int64_t vocab, int64_t stride, double temperature, double top_p,
                             float* weights, double* total);
/* The library's vocabulary policy alone, for a caller that drafts by other means and keeps its own head rows
 * (Python's drafter: runtime/vocab/native_policy.py). The same policies as evospec_drafter_open's vocab (not eagle3,
 * the drafter's own fixed vocabulary), with EvoSpec's built-in settings; vocab_size: the target's vocabulary,
 * hidden_size: the drafter's width (its states). The caller drives it as the drafter does: start a sequence, then
 * each cycle observe the committed tokens (with the drafter's state at the newest committed token before them, or
 * NULL), next (with the cycle's root state for a routed policy, see evospec_policy_routed; NULL: the set without
 * routing) and start_pending while it runs its target's pass (a pipelined policy's job starts there). next writes
 * the set (at most capacity ids), its size and whether it differs from the set next handed out before. */
typedef struct evospec_policy evospec_policy;
int evospec_policy_open(const char* bundle, const char* vocab, const char* frequencies, const char* router,
                        int64_t vocab_size, int64_t hidden_size, evospec_policy** out);
void evospec_policy_close(evospec_policy* policy);
int evospec_policy_routed(evospec_policy* policy, int* routed);
int evospec_policy_start(evospec_policy* policy, const int64_t* prompt, int64_t count, int greedy);
int evospec_policy_observe(evospec_policy* policy, const int64_t* committed, int64_t count, const float* state,
                           int64_t width);
int evospec_policy_start_pending(evospec_policy* policy);
int evospec_policy_next(evospec_policy* policy, const float* state, int64_t width, int64_t* ids, int64_t capacity,
                        int64_t* size, int* changed);

/* A gather plan's update within one bucket (runtime/gather.py's update_plan), for a caller that keeps its own plan:
 * previous_ids [bucket] (its first previous_size active), active [count] distinct ids, count <= bucket. Writes the new
 * plan's ids [bucket] (retained ids in their columns, new ones in the freed columns in the order given, padding 0),
 * *moved: the columns given a new id, or -1 when active is the previous set (ids then equal previous_ids), and the
 * columns whose id differs from previous_ids, ascending, into cols [bucket] (*changed of them). */
int evospec_update_plan(const int64_t* previous_ids, int64_t previous_size, int64_t bucket, const int64_t* active,
                        int64_t count, int64_t* ids, int64_t* moved, int64_t* cols, int64_t* changed);

/* Row ids[i] of reservoir ([reservoir_rows] rows of row_bytes bytes) to row cols[i] of rows ([row_count] rows),
 * for i < count, on the calling thread, prefetching a few rows ahead: what the library's resident rows do when a
 * plan changes, for a caller that keeps its own (Python's drafter, runtime/active_rows.py). Ids and columns
 * outside their ranges are refused before anything is written. */
int evospec_copy_rows(void* rows, int64_t row_count, const void* reservoir, int64_t reservoir_rows, int64_t row_bytes,
                      const int64_t* cols, const int64_t* ids, int64_t count);

/* A greedy drafter level's choice over one row of logits [n] (float32, contiguous): ids[0], the first column holding
 * the maximum, and with runner_up ids[1], the first other column holding the maximum of the rest (-1 when n is 1);
 * logps[0..1] their log-probabilities ((x - max) - log sum exp(x - max), the sum in float64). What the library's
 * greedy chain picks at each level, for a caller that drafts its own (Python's drafter, runtime/native_choice.py). */
int evospec_greedy_choice(const float* logits, int64_t n, int runner_up, int64_t* ids, float* logps);

#ifdef __cplusplus
}
#endif

#endif
