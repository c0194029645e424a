#include "actors/stages.hpp"

namespace strata {

void pass_on(caf::event_based_actor* self, step_ptr s) {
  auto to = s->reply_to;
  if (s->error.empty() && ++s->hop < s->path->hops.size()) to = s->path->hops[s->hop].actor;
  self->send(to, step_atom::value, std::move(s));
}

caf::behavior head_actor(caf::event_based_actor* self, model_ptr m) {
  return {
      [=](step_atom, step_ptr& s) {
        const auto& c = m->config;
        for (auto t : s->tokens)
          if (t < 0 || t >= c.vocab_size) {
            s->error = "token id " + std::to_string(t) + " outside the vocabulary of " + std::to_string(c.vocab_size);
            return pass_on(self, std::move(s));
          }
        s->x.resize(size_t(s->rows()) * size_t(c.dim));
        embed(*m, s->tokens.data(), s->rows(), s->x.data());
        pass_on(self, std::move(s));
      },
  };
}

caf::behavior shard_actor(caf::stateful_actor<shard_state>* self, model_ptr m, layer_range range) {
  auto& st = self->state;
  st.m = m;
  st.range = range;
  st.kv = kv_cache(m->config, range.begin, range.end);
  st.stats.layer_begin = range.begin;
  st.stats.layer_end = range.end;
  return {
      [=](step_atom, step_ptr& s) {
        auto& st = self->state;
        const auto& want = s->path->hops[s->hop].range;
        if (want.begin < st.range.begin || want.end > st.range.end) {
          s->error = "route asks shard [" + std::to_string(st.range.begin) + "," + std::to_string(st.range.end) +
                     ") for layers [" + std::to_string(want.begin) + "," + std::to_string(want.end) + ")";
          return pass_on(self, std::move(s));
        }
        for (int l = want.begin; l < want.end; ++l) {
          auto r = forward_layer(st.m->config, *st.m->layers[size_t(l)], l, st.kv, s->seqs.data(), s->pos.data(),
                                 s->rows(), s->x.data());
          if (!r) {
            s->error = "layer " + std::to_string(l) + ": " + r.message();
            break;
          }
        }
        ++st.stats.steps;
        st.stats.rows += uint64_t(s->rows());
        pass_on(self, std::move(s));
      },
      [=](release_atom, const std::vector<seq_id>& seqs) {
        for (auto q : seqs) self->state.kv.release(q);
      },
      [=](stats_atom) {
        auto s = self->state.stats;
        s.kv_sequences = self->state.kv.sequences();
        s.kv_bytes = self->state.kv.bytes();
        return s;
      },
  };
}

caf::behavior tail_actor(caf::event_based_actor* self, model_ptr m) {
  return {
      [=](step_atom, step_ptr& s) {
        const auto& c = m->config;
        std::vector<float> xs;
        for (int r = 0; r < s->rows(); ++r)
          if (s->want[size_t(r)])
            xs.insert(xs.end(), s->x.begin() + long(r) * c.dim, s->x.begin() + long(r + 1) * c.dim);
        int n = int(xs.size() / size_t(c.dim));
        std::vector<float> logits(size_t(n) * size_t(c.vocab_size));
        final_logits(*m, xs.data(), n, logits.data());
        if (s->return_logits) s->logits = logits;
        s->sampled.resize(size_t(n));
        for (int i = 0; i < n; ++i)
          s->sampled[size_t(i)] = sample(logits.data() + size_t(i) * size_t(c.vocab_size), c.vocab_size,
                                         s->sampling[size_t(i)], s->rng[size_t(i)]);
        s->x.clear();
        s->x.shrink_to_fit();
        pass_on(self, std::move(s));
      },
  };
}

}  // namespace strata
