// The chat-template engine (src/server/jinja.*, src/server/chat_template.*): features against
// the exact output of Python's jinja2 configured as transformers renders chat templates, real
// models' templates against golden renderings made by scripts/chat_template_goldens.py, errors,
// and bounds on what a template or a conversation can make the renderer do.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>

#include "server/chat_template.h"
#include "server/jinja.h"
#include "test_util.h"

namespace hxq {
namespace {

using ojson = nlohmann::ordered_json;

// The variables of the feature cases (the expected outputs below were rendered with them).
constexpr const char* kVars = R"({"d": {"a": 1, "b": [1, 2]}, "l": [3, 1, 2], "s": "héllo", "u": null,
  "msgs": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}], "n": 7, "e": [],
  "ws": "  a b\n", "names": ["b", "A", "a", "c"]})";
// strftime_now's clock in these tests: 2025-03-15 12:00 UTC (the same date in most time zones).
constexpr std::time_t kNow = 1742040000;

std::string render(const std::string& tmpl, const std::string& vars = kVars, jinja::RenderOptions opts = {}) {
  if (!opts.now) opts.now = kNow;
  return jinja::Template(tmpl, "test").render(ojson::parse(vars), opts);
}

// The message of the hxq::Error rendering (or parsing) `tmpl` throws; "" if it renders.
std::string error_of(const std::string& tmpl, const std::string& vars = kVars, jinja::RenderOptions opts = {}) {
  try {
    render(tmpl, vars, opts);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

std::string slurp(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::ostringstream s;
  s << f.rdbuf();
  return s.str();
}

struct Case {
  const char* tmpl;
  const char* expected;  // what jinja2 3.1 renders (transformers' environment) with kVars
};

void check_cases(const Case* begin, const Case* end) {
  for (const Case* c = begin; c != end; ++c) {
    std::string got;
    try {
      got = render(c->tmpl);
    } catch (const std::exception& e) {
      ADD_FAILURE() << "template: " << c->tmpl << "\nthrew: " << e.what();
      continue;
    }
    EXPECT_EQ(got, c->expected) << "template: " << c->tmpl;
  }
}

#define HXQ_CHECK_CASES(table) check_cases(std::begin(table), std::end(table))

// ---- feature cases (expected outputs from jinja2) ---------------------------------------------

const Case kWhitespace[] = {
    {R"~(  {% if true %}
  x
  {% endif %}
  {{ 1 }}  {# c #}
end
)~",
     R"~(  x
  1  end)~"},
    {R"~(a
{%+ if true %}b{% endif %}
)~",
     R"~(a
b)~"},
    {R"~({% raw %}
{{ x }}{% endraw %}
)~",
     R"~(
{{ x }})~"},
    {R"~(  {%- if true -%}  
 x 
  {%- endif %}  y

)~",
     R"~(x  y
)~"},
    {R"~({{- ' a ' -}}  

 {{ 'b' }}
  {#- c -#}
  d
)~",
     R"~( a bd)~"},
    {R"~(line1
line2
{% if true %}
x
{% endif %}
)~",
     R"~(line1
line2
x
)~"},
    {R"~({% for m in msgs %}
  {{ m.role }}: {{ m.content }}
{% endfor %}
)~",
     R"~(  user: hi
  assistant: yo
)~"},
    {R"~(   {# only a comment #}
after)~",
     R"~(after)~"},
    {R"~({% set x %}
  block {{ 1 }}
{% endset %}[{{ x }}])~",
     R"~([  block 1
])~"},
    {R"~(keep

)~",
     R"~(keep
)~"},
    {R"~(a {% if true %} b {% endif %} c)~",
     R"~(a  b  c)~"},
    {R"~(	{% if true %}
	tab
	{% endif %}
)~",
     R"~(	tab
)~"},
    {R"~(x  {% if true %}
yes
{% endif %})~",
     R"~(x  yes
)~"},
    {R"~({{ 'v' }}
{{ 'w' }}
)~",
     R"~(v
w)~"},
    {R"~({%- for i in l -%}
  [{{ i }}]
{%- endfor -%}
)~",
     R"~([3][1][2])~"},
    {R"~({% for i in l %}{{ i }}{% if not loop.last %}, {% endif %}{% endfor %})~",
     R"~(3, 1, 2)~"},
    {R"~(a{#- comment -#}  b)~",
     R"~(ab)~"},
    {R"~(a  {#+ c #}b)~",
     R"~(a  b)~"},
    {R"~({% if true %}   
{% endif %}z)~",
     R"~(   
z)~"},
    {R"~({%- raw -%}  {{ raw }}  {%- endraw -%}  !)~",
     R"~({{ raw }}!)~"},
    {R"~({{ {'a': {'b': 1}} }})~",
     R"~({'a': {'b': 1}})~"},
};
const Case kPrinting[] = {
    {R"~({{ 1e16 }} {{ 1e15 }} {{ 0.00001 }} {{ 0.0001 }} {{ 1.5 }} {{ 1.0 }} {{ -0.0 }} {{ 1.5e-7 }} {{ 1e100 }} {{ 123456789.125 }})~",
     R"~(1e+16 1000000000000000.0 1e-05 0.0001 1.5 1.0 -0.0 1.5e-07 1e+100 123456789.125)~"},
    {R"~({{ [1.0, 'a', "it's", none, true, false] }} {{ {'a': (1,), 'b': ()} }} {{ (1, 2) }} {{ [] }} {{ {} }})~",
     R"~([1.0, 'a', "it's", None, True, False] {'a': (1,), 'b': ()} (1, 2) [] {})~"},
    {R"~({{ ['it\'s', "a\"b", 'a\'b"c', '\n\t\x01é🎉', '\\'] }})~",
     R"~(["it's", 'a"b', 'a\'b"c', '\n\t\x01é🎉', '\\'])~"},
    {R"~({{ none }} {{ true }} {{ false }} {{ True }} {{ None }} {{ zz }}|{{ d.missing }}|)~",
     R"~(None True False True None ||)~"},
    {R"~({{ 0.1 + 0.2 }} {{ 1/3 }} {{ 10/2 }} {{ 2.5 * 2 }} {{ 1e300 * 1e10 }} {{ -1e300 * 1e10 }})~",
     R"~(0.30000000000000004 0.3333333333333333 5.0 5.0 inf -inf)~"},
    {R"~({{ d }} {{ msgs[0] }} {{ [[1], {'a': (1, 2)}] }})~",
     R"~({'a': 1, 'b': [1, 2]} {'role': 'user', 'content': 'hi'} [[1], {'a': (1, 2)}])~"},
    {R"~({{ "\u00e9\x41\n\t\\\'" }} {{ 'a' 'b' "c" }} {{ '\d' }} {{ "\101" }} {{ '\U0001F389' }})~",
     R"~(éA
	\' abc \d A 🎉)~"},
    {R"~({{ 1_000 }} {{ 1e3 }} {{ 1E3 }} {{ 0 }} {{ 42 }} {{ 3.14 }})~",
     R"~(1000 1000.0 1000.0 0 42 3.14)~"},
    {R"~({{ s }} {{ s|length }} {{ 'x' ~ 1 ~ none ~ true ~ 1.0 ~ [1] ~ zz }})~",
     R"~(héllo 5 x1NoneTrue1.0[1])~"},
};
const Case kOperators[] = {
    {R"~({{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 % -3 }} {{ 7 / 2 }} {{ 2 ** -1 }} {{ 2**10 }} {{ 2**3**2 }})~",
     R"~(3 -4 1 2 -2 3.5 0.5 1024 64)~"},
    {R"~({{ 7.5 // 2 }} {{ -7.5 % 2 }} {{ 7.0 / 2 }} {{ 2 ** 0.5 }} {{ 3 * 1.5 }} {{ 1 + 2.0 }} {{ true + 1 }} {{ -true }})~",
     R"~(3.0 0.5 3.5 1.4142135623730951 4.5 3.0 2 -1)~"},
    {R"~({{ 'a' + 'b' }} {{ [1, 2] + [3] }} {{ (1, 2) + (3,) }} {{ 'ab' * 3 }} {{ 3 * 'ab' }} {{ [0] * 3 }} {{ 'x' * 0 }} {{ 'x' * -1 }})~",
     R"~(ab [1, 2, 3] (1, 2, 3) ababab ababab [0, 0, 0]  )~"},
    {R"~({{ 'a' in 'abc' }} {{ 1 in l }} {{ 'a' in d }} {{ 5 not in l }} {{ 'z' not in 'abc' }} {{ 'x' in zz }})~",
     R"~(True True True True True False)~"},
    {R"~({{ 1 < 2 < 3 }} {{ 3 > 2 > 2 }} {{ 1 == 1.0 }} {{ 'a' < 'b' }} {{ [1, 2] < [1, 3] }} {{ none == none }} {{ 1 != 2 }} {{ 2 >= 2 }} {{ 'b' <= 'a' }})~",
     R"~(True False True True True True True True False)~"},
    {R"~({{ true and 'x' }} {{ false or 'y' }} {{ not none }} {{ '' or [] or 0 or 'last' }} {{ 0 and 1 }} {{ not 'a' }} {{ 1 and 2 and 3 }})~",
     R"~(x y True last 0 False 3)~"},
    {R"~({{ 'yes' if l else 'no' }} {{ 'yes' if e else 'no' }} {{ none if true else 1 }} [{{ 1 if false }}] {{ 1 if false else 2 if true else 3 }})~",
     R"~(yes no None [] 2)~"},
    {R"~({{ -1 }} {{ - 2 ** 2 }} {{ -(l|length) }} {{ +3 }} {{ -(1 + 2) }} {{ (1 + 2) * 3 }} {{ 1 + 2 * 3 }} {{ 10 - 2 - 3 }} {{ 2 * 3 % 4 }})~",
     R"~(-1 4 -3 3 -3 9 7 5 2)~"},
    {R"~({{ 'a' ~ 'b' == 'ab' }} {{ 1 ~ 2 * 3 }} {{ not 1 == 2 }} {{ not 1 in l }})~",
     R"~(True 16 True False)~"},
    {R"~({{ d == {'a': 1, 'b': [1, 2]} }} {{ [1] == [1.0] }} {{ (1,) == [1] }} {{ zz == zz }} {{ zz == none }})~",
     R"~(True True False True False)~"},
};
const Case kAccess[] = {
    {R"~({{ d.a }} {{ d['a'] }} {{ d.b[1] }} {{ d['b'][-1] }} {{ msgs[0].role }} {{ msgs[-1]['content'] }} {{ l.0 }} {{ d.b.1 }})~",
     R"~(1 1 2 2 user yo 3 2)~"},
    {R"~([{{ d.zz }}] [{{ l[10] }}] [{{ msgs[0].nope }}] [{{ d['items'] is callable }}] [{{ d.items is callable }}])~",
     R"~([] [] [] [True] [True])~"},
    {R"~({{ 'abc'[::-1] }} {{ l[1:] }} {{ l[:-1] }} {{ l[-1] }} {{ s[1:3] }} {{ s[::-2] }} {{ l[5:1:-1] }} {{ l[-100:100] }} {{ l[::2] }} {{ 'hello'[1] }} {{ s[-1] }})~",
     R"~(cba [1, 2] [3, 1] 2 él olh [2] [3, 1, 2] [3, 2] e o)~"},
    {R"~({{ msgs[::-1]|map(attribute='role')|list }} {{ (1, 2, 3)[1:] }} {{ l[1:2][0] }} {{ 'abc'[5:] }}|)~",
     R"~(['assistant', 'user'] (2, 3) 1 |)~"},
    {R"~({% set t = (1, 'a') %}{{ t[0] }}{{ t[-1] }}{{ t|length }}{{ t.index('a') }}{{ t.count(1) }})~",
     R"~(1a211)~"},
};
const Case kStatements[] = {
    {R"~({% if n > 5 %}big{% elif n > 2 %}mid{% else %}small{% endif %} {% if e %}x{% else %}empty{% endif %} {% if zz %}{% elif none %}{% else %}neither{% endif %})~",
     R"~(big empty neither)~"},
    {R"~({% set x = 5 %}{{ x }} {% set a, b = 1, 2 %}{{ a }}{{ b }} {% set y = [1, 2] %}{{ y }})~",
     R"~(5 12 [1, 2])~"},
    {R"~({% set ns = namespace(a=1, items=[]) %}{% for i in l %}{% set ns.a = ns.a + i %}{% endfor %}{{ ns.a }} {{ ns.items }})~",
     R"~(7 [])~"},
    {R"~({% set ns = namespace() %}{% set ns.x = 'set later' %}{{ ns.x }} {% set ns2 = namespace({'k': 'v'}, z=1) %}{{ ns2.k }}{{ ns2.z }})~",
     R"~(set later v1)~"},
    {R"~({% set x = 1 %}{% if true %}{% set x = 2 %}{% endif %}{{ x }})~",
     R"~(2)~"},
    {R"~({% for i in [1,2,3] %}{% if i > 1 %}[{{ x }}]{% endif %}{% set x = i %}{% endfor %}|{{ x }})~",
     R"~([][]|)~"},
    {R"~({% set x = 5 %}{% for i in [1,2] %}{{ x }}{% set x = i %}{{ x }}{% endfor %}{{ x }})~",
     R"~(51525)~"},
    {R"~({% set x %}
  block {{ 1 }}
{% endset %}[{{ x }}] {% set y | upper %}shout{% endset %}{{ y }} {% set z | trim | replace(' ', '_') %}  a b  {% endset %}{{ z }})~",
     R"~([  block 1
] SHOUT a_b)~"},
    {R"~({% with a = 1, b = 2 %}{{ a + b }}{% endwith %}[{{ a }}])~",
     R"~(3[])~"},
    {R"~({% filter upper %}abc {{ 'd' }}{% endfilter %} {% filter replace('a', 'b') | title %}aaa aaa{% endfilter %})~",
     R"~(ABC D Bbb Bbb)~"},
    {R"~({% set messages = msgs[1:] %}{{ messages|length }}{% for m in messages %}{{ m.role }}{% endfor %})~",
     R"~(1assistant)~"},
    {R"~({% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{{ add_generation_prompt }})~",
     R"~(False)~"},
};
const Case kLoops[] = {
    {R"~({% for x in l %}{{ loop.index }}{{ loop.index0 }}{{ loop.revindex }}{{ loop.revindex0 }}{{ loop.first }}{{ loop.last }}{{ loop.length }};{% endfor %})~",
     R"~(1032TrueFalse3;2121FalseFalse3;3210FalseTrue3;)~"},
    {R"~({% for x in l %}[{{ loop.previtem }}|{{ loop.nextitem }}]{% endfor %})~",
     R"~([|1][3|2][1|])~"},
    {R"~({% for x in l %}{{ loop.cycle('a', 'b') }}{% endfor %} {% for x in [1, 1, 2] %}{{ loop.changed(x) }}{% endfor %})~",
     R"~(aba TrueFalseTrue)~"},
    {R"~({% for k, v in d.items() %}{{ k }}={{ v }};{% endfor %} {% for k, v in d|items %}{{ k }}{% endfor %} {% for k in d %}{{ k }}{% endfor %})~",
     R"~(a=1;b=[1, 2]; ab ab)~"},
    {R"~({% for x in l if x > 1 %}{{ loop.index }}:{{ x }}{{ ',' if not loop.last }}{% endfor %})~",
     R"~(1:3,2:2)~"},
    {R"~({% for x in l %}{% if x == 1 %}{% break %}{% endif %}{{ x }}{% endfor %}|{% for x in l %}{% if x == 1 %}{% continue %}{% endif %}{{ x }}{% endfor %})~",
     R"~(3|32)~"},
    {R"~({% for x in e %}{{ x }}{% else %}empty{% endfor %} {% for x in l if x > 10 %}{% else %}none passed{% endfor %} {% for x in zz %}{% else %}undefined{% endfor %})~",
     R"~(empty none passed undefined)~"},
    {R"~({% for a, b in [(1, 2), (3, 4)] %}{{ a * b }}{% endfor %} {% for x in 'abc' %}{{ x }}-{% endfor %} {% for c in s %}{{ c }}.{% endfor %})~",
     R"~(212 a-b-c- h.é.l.l.o.)~"},
    {R"~({% for x in l %}{% for y in [1, 2] %}{{ loop.index }}{% endfor %}{{ loop.index }} {% endfor %})~",
     R"~(121 122 123 )~"},
    {R"~({% for x in l %}{% set outer = loop %}{% for y in [0] %}{{ outer.index }}{% endfor %}{% endfor %})~",
     R"~(123)~"},
    {R"~({% for m in msgs %}{% if loop.first %}F{% endif %}{{ m.role[0] }}{% if loop.last %}L{% endif %}{% endfor %})~",
     R"~(FuaL)~"},
    {R"~({% for i in range(3) %}{{ i }}{% endfor %} {{ range(1, 10, 3)|list }} {{ range(5, 0, -2)|list }} {{ range(0)|list }})~",
     R"~(012 [1, 4, 7] [5, 3, 1] [])~"},
    {R"~({%- set ns = namespace(found=false) -%}{%- for m in msgs[::-1] -%}{%- if m.role == 'user' and not ns.found -%}{%- set ns.found = true -%}{{ m.content }}{%- endif -%}{%- endfor -%})~",
     R"~(hi)~"},
};
const Case kMacros[] = {
    {R"~({% macro greet(name, greeting='Hi') %}{{ greeting }}, {{ name }}!{% endmacro %}{{ greet('Bob') }} {{ greet('Al', greeting='Yo') }} {{ greet(name='X') }} {{ greet('Z', 'Hey') }})~",
     R"~(Hi, Bob! Yo, Al! Hi, X! Hey, Z!)~"},
    {R"~({% macro wrap() %}<{{ caller() }}>{% endmacro %}{% call wrap() %}inner {{ n }}{% endcall %})~",
     R"~(<inner 7>)~"},
    {R"~({% macro list_of(items) %}{% for i in items %}{{ caller(i) }}{% endfor %}{% endmacro %}{% call(x) list_of([1, 2]) %}[{{ x }}]{% endcall %})~",
     R"~([1][2])~"},
    {R"~({% macro m(a) %}{{ a }}|{{ varargs }}|{{ kwargs }}{% endmacro %}{{ m(1, 2, 3, k=4) }})~",
     R"~(1|(2, 3)|{'k': 4})~"},
    {R"~({% macro m(a, b) %}[{{ a }}][{{ b }}]{% endmacro %}{{ m(1) }})~",
     R"~([1][])~"},
    {R"~({% macro m() %}{{ y }}{% endmacro %}{% set y = 1 %}{{ m() }}{% set y = 2 %}{{ m() }})~",
     R"~(12)~"},
    {R"~({% macro fact(n) %}{% if n <= 1 %}1{% else %}{{ n * fact(n - 1)|int }}{% endif %}{% endmacro %}{{ fact(5) }})~",
     R"~(120)~"},
    {R"~({% macro m(a, b=a ~ '!') %}{{ b }}{% endmacro %}{{ m('x') }})~",
     R"~(x!)~"},
    {R"~({% macro render_content(msg) -%}
{%- if msg.content is string -%}{{ msg.content }}{%- else -%}{%- for p in msg.content -%}{{ p.text }}{%- endfor -%}{%- endif -%}
{%- endmacro %}{{ render_content({'content': 'plain'}) }}/{{ render_content({'content': [{'text': 'a'}, {'text': 'b'}]}) }})~",
     R"~(plain/ab)~"},
    {R"~({% macro m() %}x{% endmacro %}{{ m is callable }} {{ m() ~ m() }} {{ (m() + 'y')|upper }})~",
     R"~(True xx XY)~"},
};
const Case kFilters[] = {
    {R"~({{ l|first }} {{ l|last }} [{{ e|first }}] {{ s|first }} {{ d|first }} {{ l|max }} {{ l|min }} {{ names|max }} {{ names|min }} {{ l|sum }} [{{ e|max }}])~",
     R"~(3 2 [] h a 3 1 c A 6 [])~"},
    {R"~({{ [3,1,2]|sort|join(',') }} {{ names|sort }} {{ names|unique|list }} {{ names|sort(reverse=true) }} {{ names|sort(case_sensitive=true) }} {{ names|unique(case_sensitive=true)|list }})~",
     R"~(1,2,3 ['A', 'a', 'b', 'c'] ['b', 'A', 'c'] ['c', 'b', 'A', 'a'] ['A', 'a', 'b', 'c'] ['b', 'A', 'a', 'c'])~"},
    {R"~({{ msgs|selectattr('role', 'equalto', 'user')|list }} {{ msgs|rejectattr('role', 'eq', 'user')|map(attribute='content')|list }} {{ msgs|map(attribute='role')|join('/') }})~",
     R"~([{'role': 'user', 'content': 'hi'}] ['yo'] user/assistant)~"},
    {R"~({{ l|select('odd')|list }} {{ l|reject('even')|list }} {{ l|map('string')|list }} {{ [1, none, 0, 'a']|select|list }} {{ msgs|selectattr('content')|list|length }} {{ l|select('gt', 1)|list }})~",
     R"~([3, 1] [3, 1] ['3', '1', '2'] [1, 'a'] 2 [3, 2])~"},
    {R"~({{ 3.7|int }} {{ '42'|int }} {{ 'x'|int }} {{ '4.5'|int }} {{ ' 7 '|int }} {{ 'ff'|int(base=16) }} {{ 'x'|int(-1) }} {{ '3.5'|float }} {{ 2|float }} {{ 'a'|float }} {{ -3|abs }} {{ -2.5|abs }})~",
     R"~(3 42 0 4 7 255 -1 3.5 2.0 0.0 3 2.5)~"},
    {R"~({{ 2.5|round }} {{ 3.5|round }} {{ 2.675|round(2) }} {{ 3.14159|round(2, 'floor') }} {{ 3.14159|round(1, 'ceil') }} {{ 7|round }} {{ -0.5|round }})~",
     R"~(2.0 4.0 2.67 3.14 3.2 7 -0.0)~"},
    {R"~({{ 'ab'|upper }} {{ 'ÉCOLE straße'|lower }} {{ 'straße'|upper }} {{ 'ǆemal'|capitalize }} {{ 'hELLO wORLD'|capitalize }} {{ 'hello-world (x) [y]'|title }} {{ "it's ok"|title }})~",
     R"~(AB école straße STRASSE ǅemal Hello world Hello-World (X) [Y] It's Ok)~"},
    {R"~({{ 'a.b'|replace('.', '!') }} {{ 'aaa'|replace('a', 'b', 2) }} {{ 'abc'|replace('', '-') }} {{ '  x  '|trim }} {{ 'xxhixx'|trim('x') }} {{ zz|trim }}|)~",
     R"~(a!b bba -a-b-c- x hi |)~"},
    {R"~({{ 'one\ntwo\n\nthree'|indent }} [{{ 'x\ny'|indent(2, true) }}] [{{ 'x\n\ny'|indent(2, blank=true) }}] [{{ 'x\ny'|indent('> ') }}] [{{ 'x\n'|indent }}])~",
     R"~(one
    two

    three [  x
  y] [x
  
  y] [x
> y] [x
])~"},
    {R"~({{ 'abc'|center(9) }}|{{ 'ab'|center(7) }}|{{ 'one two  three'|wordcount }}|{{ 'a&<>"\''|e }}|{{ '<b>'|escape }}|{{ '<i>'|safe }})~",
     R"~(   abc   |   ab  |3|a&amp;&lt;&gt;&#34;&#39;|&lt;b&gt;|<i>)~"},
    {R"~({{ l|batch(2)|list }} {{ l|batch(2, 'x')|list }} {{ l|reverse|list }} {{ 'abc'|reverse }} {{ l|list }} {{ 'ab'|list }} {{ d|list }})~",
     R"~([[3, 1], [2]] [[3, 1], [2, 'x']] [2, 1, 3] cba [3, 1, 2] ['a', 'b'] ['a', 'b'])~"},
    {R"~({{ {'b': 1, 'a': 2}|dictsort }} {{ {'b': 1, 'a': 2}|dictsort(by='value') }} {{ {'B': 1, 'a': 2}|dictsort(reverse=true) }} {{ d|items|list }})~",
     R"~([('a', 2), ('b', 1)] [('b', 1), ('a', 2)] [('B', 1), ('a', 2)] [('a', 1), ('b', [1, 2])])~"},
    {R"~({{ zz|default('q') }} {{ none|default('q') }} {{ ''|default('q', true) }} {{ 0|d('zero', boolean=true) }} {{ 'set'|default('q') }} {{ zz|d }}|)~",
     R"~(q None q zero set |)~"},
    {R"~({{ d|length }} {{ l|count }} {{ s|length }} {{ ''|length }} {{ zz|length }} {{ 'é🎉'|length }})~",
     R"~(2 3 5 0 0 2)~"},
    {R"~({{ '%s-%d'|format('a', 3) }} {{ '%(a)s and %(b)d'|format(a='x', b=2) }} {{ 'x %s' % 'y' }} {{ '%05.2f|%x|%r|%5s|%-4d|' % (3.14159, 255, 'q', 'ab', 7) }} {{ '%s' % [1, 2] }} {{ '100%%' % () }})~",
     R"~(a-3 x and 2 x y 03.14|ff|'q'|   ab|7   | [1, 2] 100%)~"},
    {R"~({{ msgs|map(attribute='zz', default='D')|list }} {{ [[1,2],[3,4]]|map(attribute='1')|list }} {{ [{'a': {'b': 5}}]|map(attribute='a.b')|list }} {{ msgs|map(attribute='zz')|list }})~",
     R"~(['D', 'D'] [2, 4] [5] [Undefined, Undefined])~"},
    {R"~({{ msgs|sort(attribute='content')|map(attribute='content')|list }} {{ [{'a': 2, 'b': 1}, {'a': 1, 'b': 2}, {'a': 1, 'b': 1}]|sort(attribute='a,b')|list }} {{ l|sort(attribute='x') }})~",
     R"~(['hi', 'yo'] [{'a': 1, 'b': 1}, {'a': 1, 'b': 2}, {'a': 2, 'b': 1}] [3, 1, 2])~"},
    {R"~({{ msgs|join(', ', attribute='role') }} {{ [1,2]|join }} {{ [1, 'a', none]|join('-') }} {{ l|sum(start=10) }} {{ [[1],[2]]|sum(start=[]) }} {{ msgs|map(attribute='role')|unique|list|length }})~",
     R"~(user, assistant 12 1-a-None 16 [1, 2] 2)~"},
    {R"~({{ [{'n': 3}, {'n': 1}]|max(attribute='n') }} {{ [{'n': 3}, {'n': 1}]|min(attribute='n') }} {{ [{'n': 3}, {'n': 1}]|sum(attribute='n') }})~",
     R"~({'n': 3} {'n': 1} 4)~"},
    {R"~({{ 'A long sentence here'|truncate(9) }} {{ 'A long sentence'|truncate(9, true) }} {{ 'short'|truncate(9) }} {{ 'x'|string }} {{ 1|string }} {{ [1]|string }} {{ d|attr('a') }})~",
     R"~(A... A long... short x 1 [1] )~"},
    {R"~({{ msgs|tojson }})~",
     R"~([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])~"},
};
const Case kToJson[] = {
    {R"~({{ d|tojson }} {{ {'é': [1, 2.5, none, true]}|tojson(indent=2) }} {{ 'a<b>&"'|tojson }} {{ d|tojson(separators=(',',':')) }} {{ {'b':1,'a':2}|tojson(sort_keys=true) }})~",
     R"~({"a": 1, "b": [1, 2]} {
  "é": [
    1,
    2.5,
    null,
    true
  ]
} "a<b>&\"" {"a":1,"b":[1,2]} {"a": 2, "b": 1})~"},
    {R"~({{ 'Ünïcödé 🎉 "quotes" \'single\''|tojson }} {{ 'Ünïcödé'|tojson(ensure_ascii=true) }} {{ '🎉'|tojson(ensure_ascii=true) }} {{ "\x01\x7f\x1f\b\f\r"|tojson }})~",
     R"~("Ünïcödé 🎉 \"quotes\" 'single'" "\u00dcn\u00efc\u00f6d\u00e9" "\ud83c\udf89" "\u0001\u001f\b\f\r")~"},
    {R"~({{ [1.0, 1e20, -0.0, 1e-7, 0.1, 100, -5]|tojson }} {{ {'a': none, 'b': [], 'c': {}}|tojson(indent=4) }} {{ [[1, [2]], {'x': {'y': 'z'}}]|tojson(indent='\t') }})~",
     R"~([1.0, 1e+20, -0.0, 1e-07, 0.1, 100, -5] {
    "a": null,
    "b": [],
    "c": {}
} [
	[
		1,
		[
			2
		]
	],
	{
		"x": {
			"y": "z"
		}
	}
])~"},
    {R"~({{ (1, 'a')|tojson }} {{ {1: 'int key', true: 'b', none: 'n'}|tojson }} {{ ''|tojson }} {{ 'line\nbreak\ttab\\'|tojson }} {{ {'z': 1, 'a': {'y': 2, 'b': 3}}|tojson(sort_keys=true, indent=1) }})~",
     R"~([1, "a"] {"1": "b", "null": "n"} "" "line\nbreak\ttab\\" {
 "a": {
  "b": 3,
  "y": 2
 },
 "z": 1
})~"},
    {R"~({% for t in msgs %}{{ t|tojson(indent=4) }}
{% endfor %})~",
     R"~({
    "role": "user",
    "content": "hi"
}
{
    "role": "assistant",
    "content": "yo"
}
)~"},
};
const Case kTests[] = {
    {R"~({{ u is iterable }}{{ u is sequence }}{{ zz is iterable }}{{ zz is sequence }}{{ zz is mapping }}{{ 'ab' is iterable }}{{ 1 is iterable }}{{ d is iterable }})~",
     R"~(FalseFalseTrueTrueFalseTrueFalseTrue)~"},
    {R"~({{ 'x' is string }}{{ 1 is number }}{{ true is number }}{{ true is integer }}{{ 1 is integer }}{{ 1.0 is float }}{{ d is mapping }}{{ l is mapping }}{{ none is none }}{{ true is boolean }}{{ 0 is boolean }})~",
     R"~(TrueTrueTrueFalseTrueTrueTrueFalseTrueTrueFalse)~"},
    {R"~({{ d is defined }} {{ d.zz is defined }} {{ zz is undefined }} {{ n is even }} {{ n is odd }} {{ 9 is divisibleby 3 }} {{ 9 is divisibleby(2) }} {{ n is eq 7 }} {{ n is equalto 7 }} {{ n is ne 7 }})~",
     R"~(True False True False True True False True True False)~"},
    {R"~({{ 'a' is in 'abc' }} {{ 1 is in l }} {{ n is gt 3 }} {{ n is lt(3) }} {{ n is ge 7 }} {{ n is le 6 }} {{ true is true }} {{ 1 is true }} {{ false is false }} {{ 0 is false }})~",
     R"~(True True True False True False True False True False)~"},
    {R"~({{ 'ab' is lower }} {{ 'AB' is upper }} {{ range is callable }} {{ d.get is callable }} {{ none is mapping }} {{ n is sameas 7 }} {{ none is sameas none }} {{ 'trim' is filter }} {{ 'odd' is test }} {{ 'nope' is filter }})~",
     R"~(True True True True False True True True True False)~"},
    {R"~({{ n is not none }} {{ zz is not defined }} {{ not d is mapping }} {{ l is not string }} {{ msgs[0].content is string and msgs[0].content }})~",
     R"~(True True False True hi)~"},
};
const Case kStrMethods[] = {
    {R"~({{ 'Hello World'.split() }} {{ 'a,b,,c'.split(',') }} {{ 'a b c'.split(' ', 1) }} {{ 'a b c'.rsplit(' ', 1) }} {{ '  a  b  '.split(None, 1) }} {{ '  a  b  '.rsplit(None, 1) }} {{ 'a'.split('a') }} {{ ''.split() }})~",
     R"~(['Hello', 'World'] ['a', 'b', '', 'c'] ['a', 'b c'] ['a b', 'c'] ['a', 'b  '] ['  a', 'b'] ['', ''] [])~"},
    {R"~({{ '  hi  '.strip() }}|{{ '  hi  '.lstrip() }}|{{ '  hi  '.rstrip() }}|{{ 'xxhixx'.strip('x') }}|{{ '\n\nx\n'.strip('\n') }}|{{ ws.split() }}|{{ ws.rstrip() }}|{{ 'a\u00a0b'.split() }}|{{ '\u3000x\u3000'.strip() }})~",
     R"~(hi|hi  |  hi|hi|x|['a', 'b']|  a b|['a', 'b']|x)~"},
    {R"~({{ 'hello'.startswith('he') }} {{ 'hello'.endswith(('x', 'lo')) }} {{ 'hello'.startswith('') }} {{ 'hello'.find('l') }} {{ 'héllo'.find('l') }} {{ 'hello'.rfind('l') }} {{ 'hello'.find('z') }} {{ 'hello'.count('l') }} {{ 'hello'.index('e') }})~",
     R"~(True True True 2 2 3 -1 2 1)~"},
    {R"~({{ '-'.join(['a', 'b']) }} {{ ''.join('abc') }} {{ 'a{}b{}'.format(1, 'x') }} {{ '{name}!'.format(name='N') }} {{ '{0}{0}{1}'.format('a', 'b') }} {{ '{{}} {!r}'.format('q') }})~",
     R"~(a-b abc a1bx N! aab {} 'q')~"},
    {R"~({{ 'Hello'.upper() }} {{ 'Hello'.lower() }} {{ 'hello world'.title() }} {{ "they're bill's".title() }} {{ 'hELLO'.capitalize() }} {{ 'AbC'.swapcase() }} {{ 'straße'.upper() }})~",
     R"~(HELLO hello Hello World They'Re Bill'S Hello aBc STRASSE)~"},
    {R"~({{ 'x'.isdigit() }} {{ '12'.isdigit() }} {{ ' '.isspace() }} {{ ''.isspace() }} {{ 'ab'.isalpha() }} {{ 'ab1'.isalnum() }} {{ 'ab'.islower() }} {{ 'AB1'.isupper() }} {{ '1'.islower() }})~",
     R"~(False True True False True True True True False)~"},
    {R"~({{ 'abc'.replace('b', 'B') }} {{ 'aaa'.replace('a', 'b', 1) }} {{ 'prefix_body'.removeprefix('prefix_') }} {{ 'file.txt'.removesuffix('.txt') }} {{ 'a'.zfill(3) }} {{ '-5'.zfill(4) }} {{ 'ab'.ljust(4, '.') }}| {{ 'x'.rjust(3) }} {{ 'x'.center(4, '*') }})~",
     R"~(aBc baa body file 00a -005 ab..|   x *x**)~"},
    {R"~({{ "line1\nline2\r\nline3\rline4".splitlines() }} {{ 'a\n'.splitlines() }} {{ 'a\nb'.splitlines(true) }} {{ 'a=b=c'.partition('=') }} {{ 'a=b=c'.rpartition('=') }} {{ 'abc'.partition('x') }})~",
     R"~(['line1', 'line2', 'line3', 'line4'] ['a'] ['a\n', 'b'] ('a', '=', 'b=c') ('a=b', '=', 'c') ('abc', '', ''))~"},
    {R"~({%- set c = msgs[1].content -%}{{ c.split('o')[-1].lstrip('y') }}|{{ '<think>r</think>\n\nanswer'.split('</think>')[-1].lstrip('\n') }}|{{ '<think>\nr\n</think>a'.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') }})~",
     R"~(|answer|r)~"},
};
const Case kDictListMethods[] = {
    {R"~({{ d.keys()|list }} {{ d.values()|list }} {{ d.items()|list }} {{ d.get('zz', 'dflt') }} {{ d.get('a') }} {{ d.get('zz') }} {{ d.get('b')[0] }})~",
     R"~(['a', 'b'] [1, [1, 2]] [('a', 1), ('b', [1, 2])] dflt 1 None 1)~"},
    {R"~({{ msgs[0].items()|list }} {{ msgs[0].get('role') }} {{ l.index(1) }} {{ l.count(3) }} {{ [1, 1].count(1) }} {{ d.copy() }})~",
     R"~([('role', 'user'), ('content', 'hi')] user 1 1 2 {'a': 1, 'b': [1, 2]})~"},
    {R"~({{ dict(a=1, b=2) }} {{ dict(d, c=3) }} {{ namespace(x=1).x }} {% set c = cycler('a', 'b') %}{{ c.next() }}{{ c.next() }}{{ c.next() }}{{ c.current }} {% set j = joiner('|') %}{{ j() }}a{{ j() }}b)~",
     R"~({'a': 1, 'b': 2} {'a': 1, 'b': [1, 2], 'c': 3} 1 abab a|b)~"},
    {R"~({{ 'role' in msgs[0] }} {{ 'tool_calls' in msgs[0] }} {{ msgs[0] == {'content': 'hi', 'role': 'user'} }} {{ msgs[0] == msgs[1] }} {{ msgs[0] in msgs }})~",
     R"~(True False True False True)~"},
};
const Case kGlobals[] = {
    {R"~({{ strftime_now('%Y-%m-%d %H:%M %b %d %A') }} {{ strftime_now('%d %b %Y') }})~",
     R"~(2025-03-15 12:00 Mar 15 Saturday 15 Mar 2025)~"},
    {R"~({{ range(3) is iterable }} {{ namespace is callable }} {{ raise_exception is defined }})~",
     R"~(True True True)~"},
};

TEST(JinjaWhitespace, TrimBlocksLstripBlocksAndControl) { HXQ_CHECK_CASES(kWhitespace); }
TEST(JinjaPrinting, PythonStrAndRepr) { HXQ_CHECK_CASES(kPrinting); }
TEST(JinjaOperators, ArithmeticComparisonLogic) { HXQ_CHECK_CASES(kOperators); }
TEST(JinjaAccess, AttributesItemsSlices) { HXQ_CHECK_CASES(kAccess); }
TEST(JinjaStatements, IfSetWithFilterBlocks) { HXQ_CHECK_CASES(kStatements); }
TEST(JinjaLoops, ForLoopVariableBreakContinue) { HXQ_CHECK_CASES(kLoops); }
TEST(JinjaMacros, MacrosCallerDefaults) { HXQ_CHECK_CASES(kMacros); }
TEST(JinjaFilters, BuiltinFilters) { HXQ_CHECK_CASES(kFilters); }
TEST(JinjaFilters, TransformersToJson) { HXQ_CHECK_CASES(kToJson); }
TEST(JinjaTests, BuiltinTests) { HXQ_CHECK_CASES(kTests); }
TEST(JinjaMethods, StrMethods) { HXQ_CHECK_CASES(kStrMethods); }
TEST(JinjaMethods, DictAndListMethods) { HXQ_CHECK_CASES(kDictListMethods); }
TEST(JinjaGlobals, StrftimeNowNamespaceRange) { HXQ_CHECK_CASES(kGlobals); }

TEST(JinjaTemplate, KeepsInsertionOrderOfOrderedJson) {
  // Python dicts keep insertion order; tool schemas printed with tojson depend on it.
  ojson vars = ojson::parse(R"({"t": {"zeta": 1, "alpha": {"y": 2, "b": 3}}})");
  EXPECT_EQ(jinja::Template("{{ t|tojson }} {{ t }}", "t").render(vars),
            R"({"zeta": 1, "alpha": {"y": 2, "b": 3}} {'zeta': 1, 'alpha': {'y': 2, 'b': 3}})");
}

TEST(JinjaTemplate, CopiesShareTheParsedProgram) {
  jinja::Template a("{{ x * 2 }}", "a");
  jinja::Template b = a;
  jinja::Template c(std::move(a));
  EXPECT_EQ(b.render(ojson::parse(R"({"x": 21})")), "42");
  EXPECT_EQ(c.render(ojson::parse(R"({"x": 2})")), "4");
  EXPECT_EQ(c.name(), "a");
}

// ---- errors ------------------------------------------------------------------------------------

TEST(JinjaErrors, SyntaxErrorsNameSourceAndLine) {
  struct E {
    const char* tmpl;
    const char* message;
  };
  const E cases[] = {
      {"line 1\n{% for x in l %}\n{{ x }}\n{% endif %}", "chat template test:4: unexpected 'endif' inside the 'for' block opened on line 2"},
      {"a\nb\n{% endfor %}", "chat template test:3: unexpected 'endfor' (no block is open)"},
      {"{% if x %}\n\nno end", "chat template test:3: unexpected end of template, expected 'elif', 'else' or 'endif' to close the 'if' block opened on line 1"},
      {"\n\n{{ 'unterminated }}", "chat template test:3: unexpected end of string literal"},
      {"{{ x", "chat template test:1: unexpected end of template, expected '}}'"},
      {"{{ (1 }}", "chat template test:1: unexpected '}', expected ')'"},
      {"\n{{ 1 ) }}", "chat template test:2: unexpected ')'"},
      {"{% foo %}", "chat template test:1: unknown tag 'foo'"},
      {"{% set 1 = 2 %}", "chat template test:1: expected a name to assign to, got 'integer'"},
      {"{{ x|nosuchfilter }}", "chat template test:1: no filter named 'nosuchfilter'"},
      {"\n\n\n{{ x is nosuchtest }}", "chat template test:4: no test named 'nosuchtest'"},
      {"{% break %}", "chat template test:1: 'break' outside of a loop"},
      {"{# never closed", "chat template test:1: missing end of comment tag"},
      {"{% raw %} never closed", "chat template test:1: missing end of raw directive"},
      {"{{ 1 + }}", "chat template test:1: unexpected 'end of print statement'"},
      {"{{ @ }}", "chat template test:1: unexpected char '@'"},
      {"{% include 'x' %}", "chat template test:1: the 'include' tag is not supported in chat templates"},
      {"{% macro m(a=1, b) %}{% endmacro %}", "chat template test:1: non-default argument follows default argument"},
      {"{{ f(a=1, 2) }}", "chat template test:1: positional argument follows keyword argument"},
      {"{{ 99999999999999999999 }}", "chat template test:1: integer literal 99999999999999999999 is too large"},
  };
  for (const E& c : cases) {
    try {
      jinja::Template t(c.tmpl, "test");
      ADD_FAILURE() << "parsed: " << c.tmpl;
    } catch (const jinja::RenderError& e) {
      ADD_FAILURE() << "a syntax error must not be a RenderError: " << e.what();
    } catch (const Error& e) {
      EXPECT_EQ(std::string(e.what()), c.message) << c.tmpl;
    }
  }
}

TEST(JinjaErrors, RenderErrorsNameSourceAndLine) {
  struct E {
    const char* tmpl;
    const char* message;
  };
  const E cases[] = {
      {"ok\n{{ zz.foo }}", "chat template test:2: 'zz' is undefined"},
      {"{{ d.zz.foo }}", "chat template test:1: 'dict object' has no attribute 'zz'"},
      {"{{ l[10].x }}", "chat template test:1: list object has no element 10"},
      {"{{ 'a' + zz }}", "chat template test:1: 'zz' is undefined"},
      {"{{ undefined_fn() }}", "chat template test:1: 'undefined_fn' is undefined"},
      {"{{ l.append(1) }}", "chat template test:1: access to attribute 'append' of 'list' object is unsafe."},
      {"{{ d.update({}) }}", "chat template test:1: access to attribute 'update' of 'dict' object is unsafe."},
      {"{{ u.startswith('x') }}", "chat template test:1: 'None' has no attribute 'startswith'"},
      {"{{ 1 + 'a' }}", "chat template test:1: unsupported operand type(s) for +: 'int' and 'str'"},
      {"{{ 'a' < 1 }}", "chat template test:1: '<' not supported between instances of 'str' and 'int'"},
      {"{{ 1 / 0 }}", "chat template test:1: division by zero"},
      {"{{ 5 // 0 }}", "chat template test:1: integer division or modulo by zero"},
      {"{{ none|length }}", "chat template test:1: object of type 'NoneType' has no len()"},
      {"{{ zz|tojson }}", "chat template test:1: Object of type Undefined is not JSON serializable"},
      {"{% for x in none %}{% endfor %}", "chat template test:1: 'NoneType' object is not iterable"},
      {"{% set a, b = [1] %}", "chat template test:1: not enough values to unpack (expected 2, got 1)"},
      {"{% macro m(a) %}{% endmacro %}{{ m(1, 2) }}", "chat template test:1: macro 'm' takes not more than 1 argument(s)"},
      {"{% macro m(a) %}{% endmacro %}{{ m(b=2) }}", "chat template test:1: macro 'm' takes no keyword argument 'b'"},
      {"{% set x = 1 %}{% set x.y = 2 %}", "chat template test:1: cannot assign attribute 'y' on 'x': it is not a namespace"},
      {"{{ range(1000000) }}", "chat template test:1: Range too big. The sandbox blocks ranges larger than MAX_RANGE (100000)."},
      {"{{ 9223372036854775807 + 1 }}", "chat template test:1: integer overflow"},
      {"{{ -l }}", "chat template test:1: bad operand type for unary -: 'list'"},
      {"{{ 'abc'.format(1) }}{{ '{'.format() }}", "chat template test:1: single '{' encountered in format string"},
  };
  for (const E& c : cases) {
    try {
      render(c.tmpl);
      ADD_FAILURE() << "rendered: " << c.tmpl;
    } catch (const jinja::RenderError& e) {
      EXPECT_EQ(std::string(e.what()), c.message) << c.tmpl;
    }
  }
}

TEST(JinjaErrors, RaiseExceptionSurfacesTheMessage) {
  try {
    render("{% if messages|length == 0 %}\n{{ raise_exception('Conversation roles must alternate!') }}{% endif %}",
           R"({"messages": []})");
    FAIL() << "no exception";
  } catch (const jinja::RaisedError& e) {
    EXPECT_EQ(e.message(), "Conversation roles must alternate!");
    EXPECT_EQ(std::string(e.what()), "chat template test:2: Conversation roles must alternate!");
  }
}

TEST(JinjaErrors, UndefinedIsLenientWhereJinjaIsLenient) {
  // Printing, testing, iterating, ~, default and length of an undefined value are fine.
  EXPECT_EQ(render("[{{ zz }}][{{ zz ~ 'a' }}][{{ zz|default('d') }}][{{ zz|length }}][{% for x in zz %}x{% endfor %}][{{ zz is defined }}]"),
            "[][a][d][0][][False]");
  EXPECT_EQ(render("{% if zz %}yes{% else %}no{% endif %}{{ zz == zz }}{{ msgs[0].missing is none }}"), "noTrueFalse");
}

TEST(JinjaErrors, MalformedVariables) {
  EXPECT_THROW(jinja::Template("x", "t").render(ojson::array()), jinja::RenderError);
  EXPECT_THROW(jinja::Template("x", "t").render(ojson("text")), jinja::RenderError);
  // JSON nested deeper than any value may be.
  std::string deep = std::string(600, '[') + std::string(600, ']');
  EXPECT_NE(error_of("{{ x }}", "{\"x\": " + deep + "}").find("nested deeper"), std::string::npos);
}

// ---- limits: a template or a conversation can make rendering fail, never crash or hang ------

TEST(JinjaLimits, StepLimitStopsHugeLoops) {
  jinja::RenderOptions o;
  o.max_steps = 100000;
  std::string e = error_of("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", kVars, o);
  EXPECT_NE(e.find("step limit"), std::string::npos) << e;
  // The default limit stops a loop nest of 10^10 iterations too (in about half a second).
  e = error_of("{% for i in range(100000) %}{% for j in range(100000) %}{{ '' }}{% endfor %}{% endfor %}");
  EXPECT_NE(e.find("step limit"), std::string::npos) << e;
}

TEST(JinjaLimits, OutputLimit) {
  jinja::RenderOptions o;
  o.max_output_bytes = 1000;
  EXPECT_NE(error_of("{% for i in range(2000) %}x{% endfor %}", kVars, o).find("output exceeds"), std::string::npos);
  EXPECT_NE(error_of("{{ 'x' * 100000000000 }}").find("output limit"), std::string::npos);
  EXPECT_NE(error_of("{{ [1] * 100000000000 }}").find("output limit"), std::string::npos);
  // Doubling a string in a loop hits the limit, not the memory.
  EXPECT_NE(error_of("{% set ns = namespace(s='x') %}{% for i in range(100) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}")
                .find("output limit"),
            std::string::npos);
  EXPECT_EQ(render("{{ 'ab' * 3 }}", kVars, o), "ababab");
}

TEST(JinjaLimits, DeepRecursionIsAnError) {
  std::string e = error_of("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}");
  EXPECT_NE(e.find("macro calls nested deeper than 64 levels"), std::string::npos) << e;
  // Nesting in the template itself is bounded at parse time.
  e = error_of("{{ " + std::string(5000, '(') + "1" + std::string(5000, ')') + " }}");
  EXPECT_NE(e.find("nested deeper"), std::string::npos) << e;
  e = error_of("{{ " + std::string(5000, '[') + std::string(5000, ']') + " }}");
  EXPECT_NE(e.find("nested deeper"), std::string::npos) << e;
  std::string ifs;
  for (int i = 0; i < 2000; ++i) ifs += "{% if true %}";
  e = error_of(ifs);
  EXPECT_NE(e.find("nested deeper"), std::string::npos) << e;
  e = error_of("{{ " + std::string(5000, '-') + "1 }}");
  EXPECT_NE(e.find("nested deeper"), std::string::npos) << e;
  // So are chains the parser builds in a loop (the interpreter recurses along them).
  std::string chain = "{{ 1";
  for (int i = 0; i < 5000; ++i) chain += " + 1";
  e = error_of(chain + " }}");
  EXPECT_NE(e.find("expression nested deeper than 200 levels"), std::string::npos) << e;
  chain = "{{ 'x'";
  for (int i = 0; i < 5000; ++i) chain += "|trim";
  e = error_of(chain + " }}");
  EXPECT_NE(e.find("expression nested deeper than 200 levels"), std::string::npos) << e;
  chain = "{{ d";
  for (int i = 0; i < 5000; ++i) chain += ".a";
  e = error_of(chain + " }}");
  EXPECT_NE(e.find("expression nested deeper than 200 levels"), std::string::npos) << e;
  chain.clear();
  for (int i = 0; i < 150; ++i) chain += "1 + ";
  EXPECT_EQ(render("{{ " + chain + "1 }}"), "151");  // long but legitimate chains are fine
  // Values nested by a loop are bounded too (printing / JSON / comparing them recurse).
  e = error_of("{% set ns = namespace(x=[]) %}{% for i in range(100000) %}{% set ns.x = [ns.x] %}{% endfor %}{{ ns.x }}");
  EXPECT_NE(e.find("nested deeper than 512 levels"), std::string::npos) << e;
}

TEST(JinjaLimits, CallerCannotOutliveItsBlock) {
  std::string e = error_of(
      "{% set ns = namespace() %}{% macro keep() %}{% set ns.c = caller %}{% endmacro %}{% call keep() %}x{% endcall %}{{ ns.c() }}");
  EXPECT_NE(e.find("caller() used after its call block ended"), std::string::npos) << e;
}

// Random token soup: every input parses and renders or fails with hxq::Error, nothing else.
TEST(JinjaRobustness, RandomTemplatesNeverCrash) {
  const char* pieces[] = {"{{", "}}", "{%", "%}", "{#", "#}", "-", "+", "{%-", "-%}", " ", "\n", "if", "for", "in",
                          "endif", "endfor", "else", "elif", "set", "x", "l", "d", "msgs", "loop", ".", "[", "]", "(",
                          ")", "{", "}", ",", ":", "|", "~", "*", "**", "/", "//", "%", "'s'", "\"q\"", "'", "1",
                          "2.5", "0", "-1", "true", "none", "not", "and", "or", "is", "defined", "length", "tojson",
                          "join", "macro", "endmacro", "call", "endcall", "caller", "namespace", "ns", "=", "==",
                          "<", "break", "continue", "raw", "endraw", "range", "items", "map", "attribute", "select",
                          "\xff", "\xe2\x82", "é", "🎉", "\\", "raise_exception", "strftime_now", "%Y"};
  std::mt19937 rng(12345);
  jinja::RenderOptions o;
  o.max_steps = 20000;
  o.max_output_bytes = 1 << 16;
  o.now = kNow;
  const ojson vars = ojson::parse(kVars);
  int rendered = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string t;
    int n = 1 + static_cast<int>(rng() % 24);
    for (int k = 0; k < n; ++k) t += pieces[rng() % std::size(pieces)];
    try {
      jinja::Template tpl(t, "fuzz");
      tpl.render(vars, o);
      ++rendered;
    } catch (const Error&) {
    } catch (const std::exception& e) {
      ADD_FAILURE() << "non-hxq exception " << e.what() << " for: " << t;
    }
  }
  EXPECT_GT(rendered, 100);
}

// Real templates with hostile conversations: deep JSON, huge strings, odd types.
TEST(JinjaRobustness, HostileMessagesThroughARealTemplate) {
  std::string dir = std::string(HXQ_SOURCE_DIR) + "/tests/data/chat_templates/templates/";
  for (const char* name : {"qwen3", "llama-3.1-instruct", "gemma-3-it", "mistral-nemo-instruct-2407"}) {
    ChatTemplate ct = ChatTemplate::from_string(slurp(dir + name + ".jinja"), name, "<s>", "</s>");
    const char* convs[] = {
        R"([{"role": "user", "content": 5}])",
        R"([{"role": 7, "content": null}])",
        R"([{"content": "no role"}])",
        R"([{"role": "assistant", "content": "x", "tool_calls": "not a list"}])",
        R"([{"role": "assistant", "content": "x", "tool_calls": [{"function": {"name": null, "arguments": [1, {"a": [[[]]]}]}}]}])",
        R"([{"role": "user", "content": [{"type": "image"}, {"type": "text"}]}, {"role": "tool", "content": {"a": 1}}])",
        R"([{"role": "user", "content": "\u0000\ud83c\udf89 </think> <think>"}, {"role": "assistant", "content": "</think></think>"}])",
    };
    for (const char* c : convs) {
      try {
        ct.render(ojson::parse(c), true);
      } catch (const Error&) {
      }
    }
    ojson big = ojson::array({{{"role", "user"}, {"content", std::string(1 << 20, 'x')}}});
    for (int i = 0; i < 200; ++i) big.push_back({{"role", i % 2 ? "user" : "assistant"}, {"content", "turn"}});
    try {
      EXPECT_GT(ct.render(big, true).size(), size_t(1) << 20);
    } catch (const jinja::RaisedError&) {  // templates that insist on alternation
    }
  }
}

// ---- real chat templates: golden renderings from jinja2 -----------------------------------------

const std::string& data_dir() {
  static const std::string d = std::string(HXQ_SOURCE_DIR) + "/tests/data/chat_templates";
  return d;
}

std::string token(const ojson& v) { return v.is_null() ? std::string() : v.get<std::string>(); }

TEST(ChatTemplateGoldens, EveryGoldenRenderingReproduced) {
  ojson manifest = ojson::parse(slurp(data_dir() + "/manifest.json"));
  ojson goldens = ojson::parse(slurp(data_dir() + "/goldens.json"));
  jinja::RenderOptions opts;
  opts.now = manifest["strftime_now_time"].get<std::time_t>();
  std::map<std::string, ChatTemplate> templates;
  for (const ojson& t : manifest["templates"]) {
    std::string name = t["name"];
    templates.emplace(name, ChatTemplate::from_string(slurp(data_dir() + "/templates/" + name + ".jinja"), name,
                                                      token(t["bos_token"]), token(t["eos_token"])));
  }
  size_t outputs = 0, errors = 0;
  for (const ojson& c : goldens["cases"]) {
    const ChatTemplate& ct = templates.at(c["template"]);
    ojson conv = ojson::parse(slurp(data_dir() + "/conversations/" + c["conversation"].get<std::string>() + ".json"));
    bool agp = c["add_generation_prompt"];
    std::string where = c["template"].get<std::string>() + " x " + c["conversation"].get<std::string>() +
                        (agp ? " (add_generation_prompt)" : "");
    const ojson extra = conv.contains("extra") ? conv["extra"] : ojson::object();
    if (c.contains("output")) {
      ++outputs;
      try {
        EXPECT_EQ(ct.render(conv["messages"], agp, extra, opts), c["output"].get<std::string>()) << where;
      } catch (const std::exception& e) {
        ADD_FAILURE() << where << ": " << e.what();
      }
      continue;
    }
    ++errors;
    const ojson& err = c["error"];
    try {
      ct.render(conv["messages"], agp, extra, opts);
      ADD_FAILURE() << where << ": rendered, but jinja2 raised " << err.dump();
    } catch (const jinja::RaisedError& e) {
      EXPECT_EQ(err["type"], "raise_exception") << where << ": " << e.what();
      if (err["type"] == "raise_exception") {
        EXPECT_EQ(e.message(), err["message"].get<std::string>()) << where;
      }
    } catch (const jinja::RenderError& e) {
      EXPECT_NE(err["type"], "raise_exception") << where << ": " << e.what();
    }
  }
  EXPECT_EQ(outputs + errors, goldens["cases"].size());
  EXPECT_GT(outputs, 150u);
  EXPECT_GT(errors, 20u);
}

// The committed goldens are what the generator makes now (needs Debian's python3-jinja2).
TEST(ChatTemplateGoldens, GoldensAreCurrent) {
  if (std::system("/usr/bin/python3 -c 'import jinja2' >/dev/null 2>&1") != 0)
    GTEST_SKIP() << "/usr/bin/python3 with jinja2 not available (apt-get install python3-jinja2)";
  std::string out = test::temp_dir("chat-goldens") + "/goldens.json";
  std::string cmd = "/usr/bin/python3 '" + std::string(HXQ_SOURCE_DIR) + "/scripts/chat_template_goldens.py' --out '" + out +
                    "' 2>/dev/null";
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  ojson fresh = ojson::parse(slurp(out)), committed = ojson::parse(slurp(data_dir() + "/goldens.json"));
  if (fresh["jinja2_version"] != committed["jinja2_version"])
    std::fprintf(stderr, "note: goldens made with jinja2 %s, installed %s\n", committed["jinja2_version"].dump().c_str(),
                 fresh["jinja2_version"].dump().c_str());
  ASSERT_EQ(fresh["cases"].size(), committed["cases"].size())
      << "regenerate: /usr/bin/python3 scripts/chat_template_goldens.py";
  for (size_t i = 0; i < fresh["cases"].size(); ++i)
    EXPECT_EQ(fresh["cases"][i], committed["cases"][i]) << "case " << i << "; regenerate: /usr/bin/python3 scripts/chat_template_goldens.py";
}

// ---- ChatTemplate: loading and rendering ----------------------------------------------------------

TEST(ChatTemplateLoad, FromTokenizerConfigOfQwen3) {
  HXQ_REQUIRE_DATA("data/tokenizers/qwen3/tokenizer_config.json");
  auto ct = ChatTemplate::load(test::data_path("data/tokenizers/qwen3"));
  ASSERT_TRUE(ct.has_value());
  EXPECT_EQ(ct->bos_token(), "");  // null in the config
  EXPECT_EQ(ct->eos_token(), "<|im_end|>");
  EXPECT_EQ(ct->source_text(), slurp(data_dir() + "/templates/qwen3.jinja"));
  EXPECT_EQ(ct->render(ojson::parse(R"([{"role": "user", "content": "Hi"}])"), true, ojson::parse(R"({"enable_thinking": false})")),
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n");
}

TEST(ChatTemplateLoad, SourcesInTransformersOrder) {
  std::string dir = test::temp_dir("chat-load");
  EXPECT_FALSE(ChatTemplate::load(dir).has_value());  // nothing at all
  test::write_file(dir + "/tokenizer_config.json",
                   R"({"bos_token": {"content": "<s>", "lstrip": false}, "eos_token": "</s>", "chat_template": "cfg {{ bos_token }}{{ eos_token }}"})");
  auto ct = ChatTemplate::load(dir);
  ASSERT_TRUE(ct.has_value());
  EXPECT_EQ(ct->render(ojson::array(), false), "cfg <s></s>");
  EXPECT_EQ(ct->source_name(), dir + "/tokenizer_config.json");
  test::write_file(dir + "/chat_template.json", R"({"chat_template": "json {{ messages|length }}"})");
  EXPECT_EQ(ChatTemplate::load(dir)->render(ojson::array(), false), "json 0");
  test::write_file(dir + "/chat_template.jinja", "jinja {{ add_generation_prompt }}\n");
  EXPECT_EQ(ChatTemplate::load(dir)->render(ojson::array(), true), "jinja True");
  test::write_file(dir + "/override.jinja", "override {{ bos_token }}");
  EXPECT_EQ(ChatTemplate::load(dir, dir + "/override.jinja")->render(ojson::array(), true), "override <s>");
  EXPECT_THROW(ChatTemplate::load(dir, dir + "/missing.jinja"), Error);
}

TEST(ChatTemplateLoad, NamedTemplatesUseDefault) {
  std::string dir = test::temp_dir("chat-named");
  test::write_file(dir + "/tokenizer_config.json",
                   R"({"chat_template": [{"name": "tool_use", "template": "tools"}, {"name": "default", "template": "plain"}]})");
  EXPECT_EQ(ChatTemplate::load(dir)->render(ojson::array(), false), "plain");
  test::write_file(dir + "/tokenizer_config.json", R"({"chat_template": [{"name": "rag", "template": "x"}]})");
  EXPECT_THROW(ChatTemplate::load(dir), Error);
  test::write_file(dir + "/tokenizer_config.json", R"({"chat_template": 5})");
  EXPECT_THROW(ChatTemplate::load(dir), Error);
  test::write_file(dir + "/tokenizer_config.json", R"({"chat_template": null, "eos_token": "</s>"})");
  EXPECT_FALSE(ChatTemplate::load(dir).has_value());
}

TEST(ChatTemplateLoad, SyntaxErrorAtLoadNamesFileAndLine) {
  std::string dir = test::temp_dir("chat-bad");
  test::write_file(dir + "/chat_template.jinja", "{% for m in messages %}\n{{ m.content }}\n{% endif %}\n");
  try {
    ChatTemplate::load(dir);
    FAIL() << "loaded";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()),
              "chat template " + dir + "/chat_template.jinja:3: unexpected 'endif' inside the 'for' block opened on line 1");
  }
}

TEST(ChatTemplateRender, VariablesAsTransformersSetsThem) {
  ChatTemplate ct = ChatTemplate::from_string(
      "{{ tools }} {{ documents }} {{ add_generation_prompt }} [{{ bos_token is defined }}] {{ eos_token }} {{ extra_kw }}",
      "vars", "", "</s>");
  EXPECT_EQ(ct.render(ojson::array(), false, ojson::parse(R"({"extra_kw": [1]})")), "None None False [False] </s> [1]");
  EXPECT_EQ(ct.render(ojson::array(), true, ojson::parse(R"({"tools": [], "eos_token": "E"})")), "[] None True [False] E ");
}

TEST(ChatTemplateRender, MalformedMessagesAreErrors) {
  ChatTemplate ct = ChatTemplate::from_string("{% for m in messages %}{{ m.role }}{% endfor %}", "m", "", "");
  EXPECT_THROW(ct.render(ojson::object(), true), Error);
  EXPECT_THROW(ct.render(ojson("hi"), true), Error);
  EXPECT_THROW(ct.render(ojson::parse(R"([{"role": "user"}, "text"])"), true), Error);
  EXPECT_THROW(ct.render(ojson::array(), true, ojson::array()), Error);
  EXPECT_EQ(ct.render(ojson::parse(R"([{"role": "user"}, {"role": "assistant"}])"), true), "userassistant");
}

TEST(ChatTemplateRender, ToolCallArgumentsKeepKeyOrder) {
  std::string dir = std::string(HXQ_SOURCE_DIR) + "/tests/data/chat_templates/templates/";
  ChatTemplate ct = ChatTemplate::from_string(slurp(dir + "qwen2.5-instruct.jinja"), "qwen2.5", "", "<|im_end|>");
  ojson msgs = ojson::parse(R"([{"role": "user", "content": "go"},
    {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": {"zeta": 1, "alpha": "é"}}}]}])");
  std::string out = ct.render(msgs, false);
  EXPECT_NE(out.find(R"({"name": "f", "arguments": {"zeta": 1, "alpha": "é"}})"), std::string::npos) << out;
}

}  // namespace
}  // namespace hxq
